# Training: one job per (task, model, strategy, regime group) trains all its folds (and few-shot
# repetitions) into results/cells/<task>/<model>/<strategy>/<group>/[r<R>/]fold<F>/.
# params.job holds only the resolved settings of those cells (plus the training-code version), so
# editing one strategy reruns only its jobs, and refactoring code reruns nothing.
# resources/group say what a job asks of a cluster (src/ftbench/plan/cluster.py); the Slurm profile adds the GPU.
# training.concurrent_cells (how many cells a job trains at a time) changes no result: it reaches the job
# as a resource, not a param, so changing it reruns nothing. The functions the rule calls are in common.smk.
from ftbench.plan import cluster


rule train:
    input:
        unpack(train_inputs),
    output:
        directory("results/cells/{task}/{model}/{strategy}/{group}"),
    log:
        "results/logs/train/{task}/{model}/{strategy}/{group}.log",
    group:
        lambda w: cluster.group(job_of(w))
    conda:
        "../../envs/ftbench.yaml"
    threads: lambda w: cluster.threads(config, train_job(job_of(w).path)["cells"])
    resources:
        runtime=lambda w, attempt: cluster.runtime_min(
            config, job_of(w), train_job(job_of(w).path)["cells"], attempt, train_job(job_of(w).path)["candidates"]
        ),
        mem_mb=lambda w, attempt: cluster.mem_mb(config, job_of(w), train_job(job_of(w).path)["cells"], attempt),
        concurrent_cells=config["training"]["concurrent_cells"],  # a resource, not a param: it changes no result
    params:
        job=lambda w: train_job(job_of(w).path)["settings"],
        args=lambda w: train_job(job_of(w).path)["args"],
    # the hubs are forced offline: a job loads only the local weights it was given, it never downloads
    shell:
        "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
        "python -m ftbench train --job {params.job:q} --task-table {input.table} --split {input.split} "
        "{params.args} --threads {threads} --concurrent-cells {resources.concurrent_cells} "
        "--out-dir {output} "
        "--checkpoints results/checkpoints/{wildcards.task}/{wildcards.model}/{wildcards.strategy}/{wildcards.group} "
        "2> {log}"


# `snakemake pilot` (then `snakemake cost`): the first jobs of the grid, chosen so that the rest can be projected.
rule pilot:
    input:
        pilot_jobs(),
