# Data stage: source -> standard table (+ rejects) -> image store per size -> task table.
# Sources with a download (Cohen's archive, TCIA collections) are fetched first, resumably; local copies
# (path:) and manual-download datasets (AIforCOVID) are read where they are, when the table is built.


localrules:
    download_dataset,
    source_files,


rule download_dataset:
    output:
        done=touch("resources/datasets/{dataset}/.downloaded"),
    log:
        "results/logs/download/{dataset}.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        adapter=lambda w: DATASETS[w.dataset]["adapter"],
        source=lambda w: to_json(download(w.dataset)),
    shell:
        "python -m ftbench download --adapter {params.adapter} --source {params.source:q} "
        "--out resources/datasets/{wildcards.dataset} --done {output.done} 2> {log}"


# A local copy's images, by path, size and modification time: the parameter changes when one is replaced, added or
# removed, so this file is rewritten and the dataset stage reruns (docs/reruns.md). Its table files are inputs of
# dataset_table itself.
rule source_files:
    output:
        "results/data/{dataset}/source_files.txt",
    log:
        "results/logs/data/{dataset}_source_files.log",
    params:
        files=lambda w: source_fingerprint(w.dataset),
    run:
        Path(output[0]).write_text(f"{params.files}\n")


rule dataset_table:
    input:
        dataset_inputs,
    output:
        table="results/data/{dataset}/table.parquet",
        rejects="results/data/{dataset}/rejects.csv",
    log:
        "results/logs/data/{dataset}.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        spec=lambda w: to_json(DATASETS[w.dataset]),
        version=DATA_VERSION,
    shell:
        "python -m ftbench dataset --name {wildcards.dataset} --spec {params.spec:q} --resources resources "
        "--table {output.table} --rejects {output.rejects} 2> {log}"


rule image_store:
    input:
        table="results/data/{dataset}/table.parquet",
    output:
        "results/data/{dataset}/images_{size}.npy",
    log:
        "results/logs/data/{dataset}_store_{size}.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        version=DATA_VERSION,
    shell:
        "python -m ftbench store --table {input.table} --side {wildcards.size} --out {output} 2> {log}"


rule task_table:
    input:
        table=lambda w: f"results/data/{TASKS[w.task]['dataset']}/table.parquet",
        rejects=lambda w: f"results/data/{TASKS[w.task]['dataset']}/rejects.csv",
    output:
        table="results/tasks/{task}/images.parquet",
        report="results/tasks/{task}/data_report.json",
        rejects="results/tasks/{task}/rejects.csv",
    log:
        "results/logs/tasks/{task}.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        spec=lambda w: to_json({k: v for k, v in TASKS[w.task].items() if k != "validation"}),  # folds' business
        version=DATA_VERSION,
    shell:
        "python -m ftbench task --name {wildcards.task} --spec {params.spec:q} --table {input.table} "
        "--rejects {input.rejects} --out {output.table} --report {output.report} --left-out {output.rejects} 2> {log}"
