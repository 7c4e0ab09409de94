# Splits: folds by patient under each task's validation scheme (kfold, holdout, loco) with a validation
# part, and seeded few-shot draws inside each fold. The number of folds comes from the config alone
# (grid.fold_count; LOCO lists its centres), so the whole grid is planned before any data exists.
from ftbench.plan.config import task_validation


rule folds:
    input:
        "results/tasks/{task}/images.parquet",
    output:
        split="results/splits/{task}/folds.parquet",
        summary="results/splits/{task}/folds.json",
    log:
        "results/logs/splits/{task}_folds.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        validation=lambda w: to_json(task_validation(config, w.task)),
        version=SPLIT_VERSION,
    shell:
        "python -m ftbench folds --task {wildcards.task} --task-table {input} --validation {params.validation:q} "
        "--out {output.split} --summary {output.summary} 2> {log}"


rule fewshot:
    input:
        table="results/tasks/{task}/images.parquet",
        split="results/splits/{task}/folds.parquet",
    output:
        "results/splits/{task}/fewshot/k{k}.parquet",
    log:
        "results/logs/splits/{task}_k{k}.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        seed=lambda w: task_validation(config, w.task)["seed"],
        repetitions=config["regimes"].get("fewshot", {}).get("repetitions", 5),
        version=SPLIT_VERSION,
    shell:
        "python -m ftbench fewshot --task {wildcards.task} --task-table {input.table} --split {input.split} "
        "--k {wildcards.k} --repetitions {params.repetitions} --seed {params.seed} --out {output} 2> {log}"
