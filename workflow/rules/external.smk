# External validation (regimes.transfer): the model of each fold of a source task's full-data jobs, kept by its
# train job, scored unchanged on every patient of a target task from another cohort, at the threshold the source
# chose on its own validation part (src/ftbench/plan/transfer.py, src/ftbench/train/transfer.py); one job per
# (pair, model) scores every strategy. The scored folds follow the cell contract under
# results/external/cells/<source>@<target>/<model>/<strategy>/full/fold<F>, so they are aggregated and compared
# (each pair one block) by the report stage's own rules. Adding or removing a target reruns only its jobs; a task
# that becomes a source reruns its full-data training jobs once (to keep their models).


localrules:
    external_grid,


rule transfer:
    input:
        unpack(transfer_inputs),
    output:
        directory("results/external/cells/{pair}/{model}"),
    log:
        "results/logs/transfer/{pair}/{model}.log",
    conda:
        "../../envs/ftbench.yaml"
    threads: config["training"]["threads"]
    resources:
        # one cell's memory of the source job's size class (the Slurm profile adds the GPU)
        mem_mb=lambda w, attempt: cluster.mem_mb(config, TRANSFER_JOBS[transfer_job(w)][0], 1, attempt),
    params:
        job=lambda w: to_json(transfer.job_settings(config, transfer_job(w), TRANSFER_JOBS[transfer_job(w)])),
        args=lambda w: cli_args({flag: transfer_inputs(w).get(flag) for flag in ("store", "embeddings", "weights")}),
    # the hubs are forced offline: a job loads only the local weights it was given, it never downloads
    shell:
        "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
        "python -m ftbench transfer --job {params.job:q} --cells {input.cells} --task-table {input.table} "
        "{params.args} --threads {threads} --out-dir {output} 2> {log}"


rule external_grid:
    output:
        "results/external/grid.txt",
    log:
        "results/logs/external_grid.log",
    params:
        cells=transfer.cell_paths(TRANSFER_JOBS, JOBS),
    run:
        Path(output[0]).write_text("\n".join(params.cells) + "\n")


use rule aggregate as aggregate_external with:
    input:
        jobs=[f"results/external/cells/{job.path}" for job in TRANSFER_JOBS],
        grid="results/external/grid.txt",
    output:
        cells="results/external/cells.parquet",
        predictions="results/external/predictions.parquet",
        summary="results/external/summary.parquet",
        csv=report("results/external/summary.csv", caption="../report/external.rst", category="Tables"),
    log:
        "results/logs/external/aggregate.log",
    params:
        bootstrap=config["report"]["bootstrap"],
        seed=config["report"]["seed"],
        version=REPORT_VERSION,
        roots=["results/external/cells"],


# each (source, target) pair is one block of the tests (no cohort map); no tests within a pair: every fold's model
# is scored on the same target patients, so the corrected t's correlation does not hold
use rule stats as stats_external with:
    input:
        cells="results/external/cells.parquet",
    output:
        tables=expand("results/external/stats/{table}.csv", table=STATS_TABLES),
    log:
        "results/logs/external/stats.log",
    params:
        alpha=config["report"]["alpha"],
        rope=config["report"]["rope"],
        cohorts="{}",
        args=cli_args(STATS_FLAGS | {"within-task": "none"}),
        version=REPORT_VERSION,
