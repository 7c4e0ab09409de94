# Report stage: cells -> tables with bootstrap CIs -> tests across and within tasks -> self-contained HTML report.
#
# `snakemake report_partial` writes the same report from the cells that exist now, under results/partial/,
# listing the missing and failed ones. It trains nothing, so it works after a run that stopped
# (`--keep-going` lets the other cells finish when some fail) and beside a run still in progress.
import shlex

from ftbench import REPORT_VERSION
from ftbench.analysis.captions import CAPTIONS

STATS_TABLES = ("friedman", "ranks", "posthoc", "wilcoxon", "within_task", "hierarchical")
# the stats command's optional flags (only what differs from its defaults, so that the default command stays the same)
STATS_FLAGS = {
    "control": config["report"].get("control"),
    "hierarchical": None if config["report"]["hierarchical"] else "false",
}


localrules:
    grid_list,
    cost,  # a text file, a small table: not worth a cluster job


# the device whose cells project the time of the others (report.cost_device; see src/ftbench/analysis/cost.py)
COST_DEVICE = f"--device-name {shlex.quote(config['report']['cost_device'])}" if config["report"]["cost_device"] else ""


rule grid_list:
    output:
        "results/grid.txt",
    log:
        "results/logs/grid_list.log",
    params:
        cells=[c.path for c in CELLS],
    run:
        Path(output[0]).write_text("\n".join(params.cells) + "\n")


rule aggregate:
    input:
        jobs=[f"results/cells/{job.path}" for job in JOBS],
        grid="results/grid.txt",
    output:
        cells=report("results/cells.parquet", caption="../report/cells.rst", category="Tables"),
        predictions="results/predictions.parquet",
        summary="results/summary.parquet",
        csv=report("results/summary.csv", caption="../report/summary.rst", category="Tables"),
    log:
        "results/logs/aggregate.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        bootstrap=config["report"]["bootstrap"],
        seed=config["report"]["seed"],
        version=REPORT_VERSION,
        roots=["results/cells"],
    shell:
        "python -m ftbench aggregate --cells-root {params.roots} --grid {input.grid} --cells-out {output.cells} "
        "--predictions-out {output.predictions} --summary {output.summary} "
        "--bootstrap {params.bootstrap} --seed {params.seed} 2> {log}"


rule stats:
    input:
        cells="results/cells.parquet",
    output:
        tables=report(
            expand("results/stats/{table}.csv", table=STATS_TABLES), caption="../report/stats.rst", category="Tables"
        ),
    log:
        "results/logs/stats.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        alpha=config["report"]["alpha"],
        rope=config["report"]["rope"],
        cohorts=to_json(reach.cohorts(config)),
        args=cli_args(STATS_FLAGS),
        version=REPORT_VERSION,
    shell:
        "python -m ftbench stats --cells {input.cells} --alpha {params.alpha} --rope {params.rope} "
        "--cohorts {params.cohorts:q} {params.args} --out-dir $(dirname {output.tables[0]}) 2> {log}"


# the not_possible param and flag exist only when planning left few-shot groups out (NOT_POSSIBLE, common.smk):
# other grids' reports keep their params and command
REPORT_PARAMS = {
    **({"not_possible": NOT_POSSIBLE} if NOT_POSSIBLE else {}),
    "title": config["report"]["title"],
    "alpha": config["report"]["alpha"],
    "bootstrap": config["report"]["bootstrap"],
    "captions": CAPTIONS,
    "version": REPORT_VERSION,
    "device": COST_DEVICE,
}
# external validation's tables (workflow/rules/external.smk), when regimes.transfer declares pairs
EXTERNAL_TABLES = (
    {
        "external": [
            "results/external/cells.parquet",
            "results/external/summary.parquet",
            *expand("results/external/stats/{table}.csv", table=STATS_TABLES),
        ]
    }
    if TRANSFER_JOBS
    else {}
)


rule report:
    input:
        **EXTERNAL_TABLES,
        cells="results/cells.parquet",
        summary="results/summary.parquet",
        predictions="results/predictions.parquet",
        stats=expand("results/stats/{table}.csv", table=STATS_TABLES),
        grid="results/grid.txt",
        data_reports=expand("results/tasks/{task}/data_report.json", task=TASKS),
        rejects=expand("results/data/{dataset}/rejects.csv", dataset=DATASETS),
    output:
        html=report("results/report/index.html", caption="../report/index.rst", category="Report"),
        figures=report(
            directory("results/report/figures"),
            patterns=["{kind}/{name}.svg"],
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{kind}",
            labels={"figure": "{kind}", "of": "{name}"},
        ),
    log:
        "results/logs/report.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        **REPORT_PARAMS,
        external="--external results/external" if TRANSFER_JOBS else "",
    shell:
        "python -m ftbench report --cells {input.cells} --summary {input.summary} --predictions {input.predictions} "
        "--stats-dir $(dirname {input.stats[0]}) --expected {input.grid} --logs results/logs/train "
        "--data-reports {input.data_reports} --rejects {input.rejects} --alpha {params.alpha} "
        "--bootstrap {params.bootstrap} --title {params.title:q} --out {output.html} --figures-dir {output.figures} "
        "{params.device} {params.external}"
        + (" --not-possible {params.not_possible:q}" if NOT_POSSIBLE else "")
        + " 2> {log}"


# The partial report: the same three steps on the cells complete now (no cell is an input, so nothing
# trains); the fingerprint param reruns them when cells are added or rewritten.
use rule aggregate as aggregate_partial with:
    input:
        grid="results/grid.txt",
    output:
        cells="results/partial/cells.parquet",
        predictions="results/partial/predictions.parquet",
        summary="results/partial/summary.parquet",
        csv="results/partial/summary.csv",
    log:
        "results/logs/partial/aggregate.log",
    params:
        bootstrap=config["report"]["bootstrap"],
        seed=config["report"]["seed"],
        version=REPORT_VERSION,
        roots=["results/cells", "results/checkpoints"],
        complete=complete_cells_fingerprint,


use rule stats as stats_partial with:
    input:
        cells="results/partial/cells.parquet",
    output:
        tables=expand("results/partial/stats/{table}.csv", table=STATS_TABLES),
    log:
        "results/logs/partial/stats.log",


use rule report as report_partial with:
    input:
        cells="results/partial/cells.parquet",
        summary="results/partial/summary.parquet",
        predictions="results/partial/predictions.parquet",
        stats=expand("results/partial/stats/{table}.csv", table=STATS_TABLES),
        grid="results/grid.txt",
        data_reports=expand("results/tasks/{task}/data_report.json", task=TASKS),
        rejects=expand("results/data/{dataset}/rejects.csv", dataset=DATASETS),
    output:
        html="results/partial/report/index.html",
        figures=directory("results/partial/report/figures"),
    log:
        "results/logs/partial/report.log",
    params:
        **REPORT_PARAMS,
        external="",  # external validation needs finished source jobs: the full report's


# `snakemake cost`: device-hours of every cell of the grid, measured for the cells that ran and projected
# for the others from them (see src/ftbench/analysis/cost.py). Run it after a pilot or beside a run in progress.
# With cost.device (`snakemake cost --config cost='{device: a40}'`) the cells nothing measured are projected
# from FLOPs onto that GPU, no pilot needed (src/ftbench/plan/flop_cost.py): it then needs the data stage of every
# task whose sizes cost.tasks does not declare (tables and splits; no image store, no weights, no training).
rule cost:
    input:
        unpack(cost_inputs),
    output:
        summary=report("results/partial/cost.csv", caption="../report/cost.rst", category="Tables"),
        cells="results/partial/cost_cells.csv",
    log:
        "results/logs/partial/cost.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        device=COST_DEVICE,
        config=to_json(config),
    shell:
        "python -m ftbench cost --cells {input.cells} --grid {input.grid} {params.device} --config {params.config:q} "
        "--results results --out {output.summary} 2> {log}"
