# Shared setup: validate the config and expose the grid to the rules.
import functools
import hashlib
import json
import os
import shlex
import sys

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from ftbench import DATA_VERSION, EMBEDDING_VERSION, SPLIT_VERSION
from ftbench.plan.config import ConfigError, read, resolved_grid, selected, validate
from ftbench.plan import grid, reach, transfer
from ftbench.plan.grid import CELL_FILES


def _config_files() -> list:
    """The config files in the order Snakemake merged them: the Snakefile's configfile (unless
    --replace-workflow-config), then each --configfile."""
    given = [Path(f).absolute() for f in workflow.overwrite_configfiles]
    own = [] if workflow.config_settings.replace_workflow_config else workflow.configfiles
    return [*(f for f in own if Path(f).absolute() not in given), *given]


# Snakemake has merged the config files and --config already; ftbench reads them again, its own way
# (ftbench.plan.config.read): a key given twice in one file is an error naming the file and line, a strategy
# whose kind a preset changes is replaced rather than merged, and --config values are read as YAML (numbers as
# numbers). Every job re-reads the same files and arguments, so it sees the same config.
try:
    _config, _notes = read(_config_files(), workflow.config_settings.config_args)
    config.clear()
    config.update(_config)
    validate(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
for _note in _notes:
    print(f"ftbench: {_note}", file=sys.stderr)

# the grid's tasks, and the targets of external validation (regimes.transfer): their data stage runs too
TASKS = selected(config, "tasks") | {name: config["tasks"][name] for name in transfer.targets(config)}
DATASETS = {name: config["datasets"][name] for name in dict.fromkeys(t["dataset"] for t in TASKS.values())}
CELLS = grid.cells(config)
print(resolved_grid(config, len(CELLS)), file=sys.stderr)
print(reach.design_line(config), file=sys.stderr)
if _transfer_line := transfer.design_line(config):
    print(_transfer_line, file=sys.stderr)
for _reason in transfer.left_out(config):
    print(f"ftbench: not in the grid: {_reason}", file=sys.stderr)
for (model, strategy), reason in grid.excluded(config).items():
    print(f"ftbench: not in the grid: {model} x {strategy}: {reason}", file=sys.stderr)
# few-shot groups the declared class counts cannot give: left out, and listed by the report
NOT_POSSIBLE = list(grid.not_possible(config).values())
for reason in NOT_POSSIBLE:
    print(f"ftbench: not in the grid: {reason}", file=sys.stderr)


def _uses_conda() -> bool:
    methods = getattr(workflow.deployment_settings, "deployment_method", ()) or ()
    return any("conda" in str(m).lower() for m in methods)


def _first_on(variable: str, path: str) -> None:
    """Put ``path`` first on the environment's search path ``variable`` (once, however often this is parsed)."""
    entries = [p for p in os.environ.get(variable, "").split(os.pathsep) if p and p != path]
    os.environ[variable] = os.pathsep.join([path, *entries])


# Rules call `python -m ftbench`, the CLI of this checkout whatever is installed: its src/ goes first on the
# jobs' PYTHONPATH, and, outside conda environments, the interpreter running Snakemake first on their PATH (set
# here, in the environment every job inherits; a cluster job re-parses this file). The command text stays the
# same on every machine, so neither another interpreter nor another checkout location reruns anything.
_first_on("PYTHONPATH", SRC)
if not _uses_conda():
    _first_on("PATH", str(Path(sys.executable).parent))


def cli_args(flags: dict[str, str | None]) -> str:
    """``--flag value`` for each flag that has a value: the optional arguments of a job's command."""
    return " ".join(f"--{flag} {shlex.quote(str(value))}" for flag, value in flags.items() if value is not None)


def to_json(value) -> str:
    """Stable JSON for params: the same settings always give the same string (no spurious reruns)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# ---- input and params functions of the rules (Snakemake's convention: functions here, rules in the stage files)


@functools.cache
def download(dataset: str) -> dict | None:
    """What the download job of a dataset fetches (None: a local copy or a manual download)."""
    from ftbench.data.adapters import download_source  # polars, pydicom: only when a data rule is planned

    images = [t.get("images", "all") for t in TASKS.values() if t["dataset"] == dataset]
    source = download_source(DATASETS[dataset], images)
    if source and "collection" in source:  # TCIA collections: what the download fetches, from IDC's index
        from ftbench.data.idc import describe

        print(describe(dataset, source), file=sys.stderr)
    return source


def dataset_download(w) -> list[str]:
    """A downloaded dataset's completion marker (local copies and manual downloads have none)."""
    return ["resources/datasets/{dataset}/.downloaded"] if download(w.dataset) else []


def dataset_inputs(w) -> list[str]:
    """What the dataset stage reads: the download marker, or a local copy's table files and its images'
    fingerprint (ftbench.data.sources), so that an edited table or a replaced image reruns it."""
    from ftbench.data import sources

    spec = DATASETS[w.dataset]
    local = ["results/data/{dataset}/source_files.txt", *sources.tables(spec)] if sources.local(spec) else []
    return [*dataset_download(w), *local]


@functools.cache
def source_fingerprint(dataset: str) -> str:
    """Size and modification time of every image a local copy lists, hashed (computed once per planning)."""
    from ftbench.data import sources

    return sources.fingerprint(dataset, DATASETS[dataset])


def embedding_inputs(w) -> dict:
    return grid.backbone_inputs(config, w.dataset, w.model)


JOBS = grid.jobs(config, CELLS)
JOB_BY_PATH = {job.path: job for job in JOBS}
# external validation (regimes.transfer): one job per (source, target, model), with the source jobs it scores
TRANSFER_JOBS = transfer.jobs(config, JOBS)
TRANSFER_BY_PATH = {job.path: job for job in TRANSFER_JOBS}


def transfer_job(w) -> "transfer.TransferJob":
    return TRANSFER_BY_PATH[f"{w.pair}/{w.model}"]


def transfer_inputs(w) -> dict:
    """What an external validation job reads (ftbench.plan.transfer.job_inputs)."""
    job = transfer_job(w)
    return transfer.job_inputs(config, job, TRANSFER_JOBS[job])


def job_of(w) -> "grid.Job":
    return JOB_BY_PATH[f"{w.task}/{w.model}/{w.strategy}/{w.group}"]


@functools.cache
def train_job(path: str) -> dict:
    """What a training job needs, computed once per job (Snakemake asks for each part separately): its
    inputs, the optional arguments of its command and its resolved settings as JSON."""
    job = JOB_BY_PATH[path]
    inputs = grid.job_inputs(config, job)
    optional = {flag: inputs.get(flag) for flag in ("store", "embeddings", "weights", "fewshot")}
    settings = grid.job_settings(config, job, JOBS[job])
    return {
        "inputs": inputs,
        "args": cli_args(optional),
        "settings": to_json(settings),
        "cells": len(JOBS[job]),
        "candidates": len(settings.get("candidates", [])) or 1,
    }


def train_inputs(w) -> dict:
    return train_job(job_of(w).path)["inputs"]


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
            cheap = min(jobs, key=lambda job: not grid.uses_cache(config, job.strategy, job.model))
            chosen += [job for job in jobs if (job.model, job.strategy) == (cheap.model, cheap.strategy)]
    return [f"results/cells/{job.path}" for job in chosen]


def complete_cells_fingerprint(w) -> str:
    """Which grid cells are complete now, and when they were written: the partial report reruns when it changes."""
    digest = hashlib.sha256()
    for cell in CELLS:
        for root in ("results/cells", "results/checkpoints"):
            files = [Path(root, cell.path, f) for f in CELL_FILES]
            if all(f.is_file() for f in files):
                digest.update(f"{cell.path}:{files[0].stat().st_mtime_ns}\n".encode())
                break
    return digest.hexdigest()


def cost_inputs(w) -> dict:
    """The cost projection's inputs: with cost.device, the data stage of tasks whose sizes are not declared."""
    from ftbench.plan import flop_cost  # polars: imported only when the cost rule is asked for

    inputs = {"cells": "results/partial/cells.parquet", "grid": "results/grid.txt"}
    if config["cost"]["device"]:
        inputs["data"] = [
            path
            for task in config["benchmark"]["tasks"]
            if flop_cost.declared_counts(config, task) is None
            for path in flop_cost.data_inputs(config, task)
        ]
    return inputs


wildcard_constraints:
    dataset=r"[^/]+",
    task=r"[^/]+",
    model=r"[^/]+",
    strategy=r"[^/]+",
    group=r"full|k\d+",
    pair=r"[^/@]+@[^/@]+",
    size=r"\d+",
    k=r"\d+",
