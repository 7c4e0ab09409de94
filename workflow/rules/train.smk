# Training: one job per (task, model, strategy, regime group) trains all its folds (and few-shot
# repetitions) into results/cells/<task>/<model>/<strategy>/<group>/[r<R>/]fold<F>/.
# params.job holds only the resolved settings of those cells (plus the training-code version), so
# editing one strategy reruns only its jobs, and refactoring code reruns nothing.
# resources/group say what a job asks of a cluster (src/ftbench/cluster.py); the Slurm profile adds the GPU.
# training.concurrent_cells (how many cells a job trains at a time) changes no result: it reaches the job
# through the command template, not params, so changing it reruns nothing.
from ftbench import cluster

JOBS = grid.jobs(config, CELLS)
JOB_BY_PATH = {job.path: job for job in JOBS}


def job_of(w) -> "grid.Job":
    return JOB_BY_PATH[f"{w.task}/{w.model}/{w.strategy}/{w.group}"]


def train_inputs(w):
    job = job_of(w)
    dataset = TASKS[job.task]["dataset"]
    inputs = {
        "table": f"results/tasks/{job.task}/images.parquet",
        "split": f"results/splits/{job.task}/folds.parquet",
    }
    if grid.uses_cache(config, job.strategy):
        inputs["embeddings"] = f"results/embeddings/{dataset}/{job.model}.npy"
    else:
        inputs["store"] = f"results/data/{dataset}/images_{grid.model_img_size(config, job.model)}.npy"
        if weights := model_weights(job.model):
            inputs["weights"] = weights
    if job.group != "full":
        inputs["fewshot"] = f"results/splits/{job.task}/fewshot/{job.group}.parquet"
    return inputs


rule train:
    input:
        unpack(train_inputs),
    output:
        directory("results/cells/{task}/{model}/{strategy}/{group}"),
    params:
        job=lambda w: to_json(grid.job_settings(config, job_of(w), JOBS[job_of(w)])),
        store=optional("store", "store"),
        embeddings=optional("embeddings", "embeddings"),
        weights=optional("weights", "weights"),
        fewshot=optional("fewshot", "fewshot"),
    threads: lambda w: cluster.threads(config, len(JOBS[job_of(w)]))
    resources:
        runtime=lambda w, attempt: cluster.runtime_min(config, job_of(w), len(JOBS[job_of(w)]), attempt),
        mem_mb=lambda w, attempt: cluster.mem_mb(config, job_of(w), len(JOBS[job_of(w)]), attempt),
    group:
        lambda w: cluster.group(job_of(w))
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/train/{task}/{model}/{strategy}/{group}.log",
    # the hubs are forced offline: a job loads only the local weights it was given, it never downloads
    shell:
        "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
        "{FTBENCH} train --job {params.job:q} --task-table {input.table} --split {input.split} "
        "{params.store} {params.embeddings} {params.weights} {params.fewshot} --threads {threads} "
        "--concurrent-cells {config[training][concurrent_cells]} "
        "--out-dir {output} "
        "--checkpoints results/checkpoints/{wildcards.task}/{wildcards.model}/{wildcards.strategy}/{wildcards.group} "
        "2> {log}"


def pilot_jobs() -> list[str]:
    """Every (model, strategy)'s full-data job and smallest-K job on the pilot task, and on each other task
    all jobs of one cheap pair (the first that trains from the embedding cache): what `snakemake cost` needs
    to project the rest of the grid. They are jobs of the grid itself: the full run reuses them."""
    pilot = config["cluster"]["pilot_task"] or config["benchmark"]["tasks"][0]
    groups = sorted({job.group for job in JOBS}, key=lambda g: (g != "full", int(g[1:]) if g != "full" else 0))
    chosen = [job for job in JOBS if job.task == pilot and job.group in groups[:2]]
    for task in config["benchmark"]["tasks"]:
        jobs = [job for job in JOBS if job.task == task and task != pilot]
        if jobs:
            cheap = min(jobs, key=lambda job: not grid.uses_cache(config, job.strategy))
            chosen += [job for job in jobs if (job.model, job.strategy) == (cheap.model, cheap.strategy)]
    return [f"results/cells/{job.path}" for job in chosen]


# `snakemake pilot` (then `snakemake cost`): the first jobs of the grid, chosen so that the rest can be projected.
rule pilot:
    input:
        pilot_jobs(),
