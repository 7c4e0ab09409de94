# Report stage: all cells -> one table -> summary over folds -> self-contained HTML report.


rule aggregate:
    input:
        jobs=[f"results/cells/{job.path}" for job in JOBS],
    output:
        cells=report("results/cells.parquet", caption="../report/cells.rst", category="Tables"),
        summary="results/summary.parquet",
        csv=report("results/summary.csv", caption="../report/summary.rst", category="Tables"),
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/aggregate.log",
    shell:
        "{FTBENCH} aggregate --jobs {input.jobs} --cells-out {output.cells} --summary {output.summary} 2> {log}"


rule grid_list:
    output:
        "results/grid.txt",
    params:
        cells=[c.path for c in CELLS],
    log:
        "results/logs/grid_list.log",
    run:
        Path(output[0]).write_text("\n".join(params.cells) + "\n")


rule report:
    input:
        cells="results/cells.parquet",
        summary="results/summary.parquet",
        grid="results/grid.txt",
        data_reports=expand("results/tasks/{task}/data_report.json", task=TASKS),
        rejects=expand("results/data/{dataset}/rejects.csv", dataset=DATASETS),
    output:
        report("results/report/index.html", caption="../report/index.rst", category="Report"),
    params:
        title=config["report"]["title"],
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/report.log",
    shell:
        "{FTBENCH} report --cells {input.cells} --summary {input.summary} --expected {input.grid} "
        "--data-reports {input.data_reports} --rejects {input.rejects} --title {params.title:q} --out {output} 2> {log}"
