# Splits: k-fold by patient with a validation part, and seeded few-shot draws inside each fold.


rule folds:
    input:
        "results/tasks/{task}/images.parquet",
    output:
        "results/splits/{task}/folds.parquet",
    params:
        folds=config["validation"]["folds"],
        val_fraction=config["validation"]["val_fraction"],
        seed=config["validation"]["seed"],
        version=SPLIT_VERSION,
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/splits/{task}_folds.log",
    shell:
        "{FTBENCH} folds --task {wildcards.task} --task-table {input} --folds {params.folds} "
        "--val-fraction {params.val_fraction} --seed {params.seed} --out {output} 2> {log}"


rule fewshot:
    input:
        table="results/tasks/{task}/images.parquet",
        split="results/splits/{task}/folds.parquet",
    output:
        "results/splits/{task}/fewshot/k{k}r{rep}.parquet",
    params:
        seed=config["validation"]["seed"],
        version=SPLIT_VERSION,
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/splits/{task}_k{k}r{rep}.log",
    shell:
        "{FTBENCH} fewshot --task {wildcards.task} --task-table {input.table} --split {input.split} "
        "--k {wildcards.k} --repetition {wildcards.rep} --seed {params.seed} --out {output} 2> {log}"
