# Training cells: one job per (task, model, strategy, regime, fold).
# params.settings holds only the cell's resolved settings (plus the training-code version), so editing
# one strategy reruns only its cells, and refactoring code reruns nothing.
# resources/group say what a cell asks of a cluster (src/ftbench/cluster.py); the Slurm profile adds the GPU.
from ftbench import cluster

CELL_BY_PATH = {cell.path: cell for cell in CELLS}


def cell_of(w) -> "grid.Cell":
    return CELL_BY_PATH[f"{w.task}/{w.model}/{w.strategy}/{w.regime}/fold{w.fold}"]


def train_inputs(w):
    cell = cell_of(w)
    dataset = TASKS[cell.task]["dataset"]
    size = grid.model_img_size(config, cell.model)
    inputs = {
        "table": f"results/tasks/{cell.task}/images.parquet",
        "split": f"results/splits/{cell.task}/folds.parquet",
        "store": f"results/data/{dataset}/images_{size}.npy",
    }
    if cell.regime != "full":
        inputs["fewshot"] = f"results/splits/{cell.task}/fewshot/{cell.regime}.parquet"
    return inputs


rule train:
    input:
        unpack(train_inputs),
    output:
        predictions="results/cells/{task}/{model}/{strategy}/{regime}/fold{fold}/predictions.parquet",
        metrics="results/cells/{task}/{model}/{strategy}/{regime}/fold{fold}/metrics.json",
        run="results/cells/{task}/{model}/{strategy}/{regime}/fold{fold}/run.json",
    params:
        settings=lambda w: to_json(grid.cell_settings(config, cell_of(w))),
        fewshot=lambda w, input: f"--fewshot {input.fewshot}" if "fewshot" in input.keys() else "",
    threads: config["training"]["threads"]
    resources:
        runtime=lambda w, attempt: cluster.runtime_min(config, cell_of(w), attempt),
        mem_mb=lambda w, attempt: cluster.mem_mb(config, cell_of(w), attempt),
    group:
        lambda w: cluster.group(cell_of(w))
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/train/{task}/{model}/{strategy}/{regime}/fold{fold}.log",
    shell:
        "{FTBENCH} train --settings {params.settings:q} --task-table {input.table} --split {input.split} "
        "--store {input.store} {params.fewshot} --threads {threads} "
        "--out-dir $(dirname {output.metrics}) 2> {log}"
