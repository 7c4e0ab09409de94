# Data stage: source -> standard table (+ rejects) -> image store per size -> task table.
from ftbench.data.adapters import needs_download


localrules: download_dataset


rule download_dataset:
    output:
        done=touch("resources/datasets/{dataset}/.downloaded"),
    params:
        url=lambda w: DATASETS[w.dataset]["url"],
        sha256=lambda w: DATASETS[w.dataset].get("sha256") or "",
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/download/{dataset}.log",
    shell:
        "{FTBENCH} download --url {params.url:q} --sha256 {params.sha256:q} "
        "--out resources/datasets/{wildcards.dataset} --done {output.done} 2> {log}"


def dataset_download(w):
    return ["resources/datasets/{dataset}/.downloaded"] if needs_download(DATASETS[w.dataset]) else []


rule dataset_table:
    input:
        dataset_download,
    output:
        table="results/data/{dataset}/table.parquet",
        rejects="results/data/{dataset}/rejects.csv",
    params:
        spec=lambda w: to_json(DATASETS[w.dataset]),
        version=DATA_VERSION,
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/data/{dataset}.log",
    shell:
        "{FTBENCH} dataset --name {wildcards.dataset} --spec {params.spec:q} --resources resources "
        "--table {output.table} --rejects {output.rejects} 2> {log}"


rule image_store:
    input:
        table="results/data/{dataset}/table.parquet",
    output:
        "results/data/{dataset}/images_{size}.npy",
    params:
        version=DATA_VERSION,
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/data/{dataset}_store_{size}.log",
    shell:
        "{FTBENCH} store --table {input.table} --side {wildcards.size} --out {output} 2> {log}"


rule task_table:
    input:
        table=lambda w: f"results/data/{TASKS[w.task]['dataset']}/table.parquet",
    output:
        table="results/tasks/{task}/images.parquet",
        report="results/tasks/{task}/data_report.json",
    params:
        spec=lambda w: to_json(TASKS[w.task]),
        version=DATA_VERSION,
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/tasks/{task}.log",
    shell:
        "{FTBENCH} task --name {wildcards.task} --spec {params.spec:q} --table {input.table} "
        "--out {output.table} --report {output.report} 2> {log}"
