"""External validation: the (source, target) pairs of ``regimes.transfer`` and the jobs that score them.

Torch-free (used by the Snakefile). A source task's full-data cells keep their trained model (``keep_model`` in
their settings, so the train job writes ``model.pt`` or ``probe.pkl`` beside the cell files); a transfer job runs
each fold's kept model, unchanged, on every patient of the target task, at the decision threshold the source cell
chose on its own validation part. The target takes no part in training, early stopping, the threshold or the choice
among candidates. Its scored folds follow the cell contract (``grid.CELL_FILES``) under
``results/external/cells/<source>@<target>/<model>/<strategy>/full/fold<F>``, so the aggregation, the statistics
(each pair one block) and the report read them as they read cells, with ``<source>@<target>`` as the task.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftbench import TRAINING_VERSION
from ftbench.plan import grid, reach

PAIR_SEPARATOR = "@"  # not allowed in task names (the schema's name pattern): a pair's name splits back unambiguously
KEPT_FILES = ("model.pt", "probe.pkl")  # what a kept cell adds to grid.CELL_FILES: its trained model or fitted probe


def declared(config: dict) -> list[tuple[str, str]]:
    """Every (source, target) pair ``regimes.transfer`` declares, in the config's order."""
    spec = config.get("regimes", {}).get("transfer") or {}
    return [(source, target) for source, targets in spec.items() for target in targets or []]


def pairs(config: dict) -> list[tuple[str, str]]:
    """The pairs the grid scores: those whose source is a task of the benchmark (it has trained cells)."""
    return [(s, t) for s, t in declared(config) if s in config["benchmark"]["tasks"]]


def left_out(config: dict) -> list[str]:
    """Why each declared pair is not scored: its source is not in ``benchmark.tasks`` (a preset narrowed the grid)."""
    return [
        f"external validation {s} -> {t}: its source is not a task of the benchmark (benchmark.tasks)"
        for s, t in declared(config)
        if s not in config["benchmark"]["tasks"]
    ]


def pair_name(source: str, target: str) -> str:
    """``<source>@<target>``: the pair's folder, and its name as a task in the external tables."""
    return f"{source}{PAIR_SEPARATOR}{target}"


def targets(config: dict) -> list[str]:
    """Every target task, once: their data stage runs though they need not be in the grid."""
    return list(dict.fromkeys(target for _, target in pairs(config)))


@dataclass(frozen=True)
class TransferJob:
    """One external validation job: the full-data jobs of one model on the source (every strategy, every fold),
    scored on the target. One job per model, not per strategy: scoring is forward passes only, and the job loads
    the target's data once (the default grid: 22 jobs, not 168); editing one strategy rescores its model's others."""

    source: str
    target: str
    model: str

    @property
    def path(self) -> str:
        """Its folder under ``results/external/cells``; each strategy's folds in ``<strategy>/full/fold<F>``."""
        return f"{pair_name(self.source, self.target)}/{self.model}"


def jobs(config: dict, grid_jobs: dict[grid.Job, list[grid.Cell]]) -> dict[TransferJob, list[grid.Job]]:
    """Every transfer job, with the source's full-data training jobs it scores (one per strategy of the model)."""
    out: dict[TransferJob, list[grid.Job]] = {}
    for source, target in pairs(config):
        for job in grid_jobs:
            if job.task == source and job.group == "full":
                out.setdefault(TransferJob(source, target, job.model), []).append(job)
    return out


def cell_paths(
    transfer_jobs: dict[TransferJob, list[grid.Job]], grid_jobs: dict[grid.Job, list[grid.Cell]]
) -> list[str]:
    """The cells the transfer jobs write, under ``results/external/cells``: ``<pair>/<model>/<strategy>/full/fold<F>``,
    one per fold of each source job (a training cell's layout, with the pair as its task)."""
    return [
        f"{job.path}/{source.strategy}/full/{cell.leaf}"
        for job, sources in transfer_jobs.items()
        for source in sources
        for cell in grid_jobs[source]
    ]


def reads(config: dict, source: grid.Job) -> str:
    """What a source job's kept models run on: ``embeddings`` (a head or probe on cached features) or ``images``."""
    return "embeddings" if grid.uses_cache(config, source.strategy, source.model) else "images"


def job_inputs(config: dict, job: TransferJob, sources: list[grid.Job]) -> dict[str, str | list[str]]:
    """What a transfer job reads: the source's trained job folders, the target's task table, and what the kept
    models run on, from the target's data: its embedding cache (heads on cached features) and/or its image store
    (with the model's weights, which a kept state does not repeat)."""
    dataset = config["tasks"][job.target]["dataset"]
    inputs: dict[str, str | list[str]] = {
        "cells": [f"results/cells/{source.path}" for source in sources],
        "table": f"results/tasks/{job.target}/images.parquet",
    }
    kinds = {reads(config, source) for source in sources}
    if "embeddings" in kinds:
        inputs["embeddings"] = f"results/embeddings/{dataset}/{job.model}.npy"
    if "images" in kinds:
        inputs |= grid.backbone_inputs(config, dataset, job.model)
    return inputs


def job_settings(config: dict, job: TransferJob, sources: list[grid.Job]) -> dict:
    """What a transfer job's result depends on beyond its inputs (the source's cells and the target's data): the
    code's version, the pair, and what each strategy's kept models run on."""
    return {
        "version": TRAINING_VERSION,
        "source": job.source,
        "target": job.target,
        "strategies": {source.strategy: reads(config, source) for source in sources},
    }


def design_line(config: dict) -> str:
    """The planning line about external validation: the pairs, and that each is one block of the tests."""
    found = pairs(config)
    if not found:
        return ""
    report = config.get("report", {})
    k = len(config["benchmark"]["strategies"])
    floor = reach.Reach(len(found), reach.comparisons(k, bool(report.get("control"))), report.get("alpha", 0.05))
    listed = ", ".join(f"{s} -> {t}" for s, t in found)
    return (
        f"ftbench: external validation: {len(found)} (source, target) pair(s), one block each: {listed}; "
        f"{floor.sentence('across-pair')}"
    )
