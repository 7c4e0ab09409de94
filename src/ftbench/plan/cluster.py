"""What a training job asks of a cluster: wall time, host memory and its Slurm batch.

Torch-free (the Snakefile imports it; every Slurm job re-parses the Snakefile). Requests scale with the
backbone's size class, read from its architecture name, and with the image side; each retry (Snakemake's
``attempt``) asks for proportionally more, so a cell killed for time or memory gets through on retry.
The figures are generous first guesses for Cohen-sized data on one GPU. With ``cluster.runtimes`` (a
`snakemake cost` projection, after a pilot) a job asks for its cells' measured or projected seconds times
``cluster.runtime_margin`` instead; ``--set-resources train:runtime=...`` overrides both.

A job trains ``training.concurrent_cells`` of its cells at a time (at most all of them; ``ftbench.train.job``): it asks
for the CPU threads and host memory of that many cells, and for the wall time of its rounds of cells, each
round as long as one cell. That holds while the cells side by side leave each other the GPU (few-shot cells:
one leaves it mostly idle); a pilot run with the same setting measures cells side by side, so a projection in
``cluster.runtimes`` includes how much they slow each other down.
"""

from __future__ import annotations

import csv
import functools
import math
import re

from ftbench.models.zoo import resolve
from ftbench.plan import grid

# Size class -> (minutes per full-data cell at 224 px, minutes per few-shot cell, host memory MB).
SIZE_CLASSES: dict[str, tuple[int, int, int]] = {
    "xs": (5, 2, 2000),  # timm's test_* models of the demo and tests
    "s": (30, 5, 8000),  # ResNet-18/34, ViT-S, MobileNets: < ~30 M parameters
    "m": (60, 8, 12000),  # ResNet-50, DenseNet-121, ViT-B: ~30-100 M
    "l": (120, 15, 24000),  # ViT-L, VGG, ResNet-101/152: ~100-350 M
    "xl": (240, 30, 48000),  # ViT-H/g: > 350 M
}
# First match wins, on "<arch> <loader name>" in lower case; an unknown backbone counts as "m".
SIZE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(^|\s)test_", "xs"),
    (r"huge|giant|vit[-_]?[hg](\b|\d)", "xl"),
    (r"large|vit[-_]?l(\b|\d)|vgg|resnet(101|152)|resnext101|densenet(161|169|201)|convnext_(base|large)", "l"),
    (r"base|vit[-_]?b(\b|\d)|resnet50|resnext50|densenet121|convnext_(tiny|small)|efficientnet_b[3-7]", "m"),
    (r"small|tiny|vit[-_]?s(\b|\d)|resnet(18|34)|mobilenet|efficientnet_b[0-2]", "s"),
)
FEWSHOT_GROUP = "fewshot_cells"


@functools.cache
def size_class(arch: str) -> str:
    """The size class of an architecture (a zoo key or a timm name), from its name alone."""
    text = f"{arch} {resolve(arch).name}".lower()
    return next((cls for pattern, cls in SIZE_PATTERNS if re.search(pattern, text)), "m")


@functools.cache
def seconds_per_cell(projection: str) -> dict[str, float]:
    """Mean seconds of a cell of each training job (``grid.Job.path``) in a `snakemake cost` projection
    (``results/partial/cost_cells.csv``); a job with a cell nothing could estimate is left out."""
    jobs: dict[str, list[float]] = {}
    unknown = set()
    with open(projection, newline="") as rows:
        for row in csv.DictReader(rows):
            job = grid.job_of_cell(row["cell"])
            if row["seconds"]:
                jobs.setdefault(job, []).append(float(row["seconds"]))
            else:
                unknown.add(job)
    return {job: sum(times) / len(times) for job, times in jobs.items() if job not in unknown}


def concurrency(config: dict, cells: int) -> int:
    """How many of a job's ``cells`` train at the same time: ``training.concurrent_cells``, at most all of them."""
    return max(1, min(config["training"]["concurrent_cells"], cells))


def threads(config: dict, cells: int) -> int:
    """CPU threads of a job of ``cells`` cells: ``training.threads`` for each cell it trains at a time."""
    return config["training"]["threads"] * concurrency(config, cells)


def runtime_min(config: dict, job: grid.Job, cells: int, attempt: int = 1, candidates: int = 1) -> int:
    """Wall time (minutes) for a job of ``cells`` cells x attempt: its rounds of concurrent cells, each as long
    as a cell of the projection in ``cluster.runtimes`` times ``cluster.runtime_margin`` where it has the job
    (a projected cell counts every candidate it trains), else of its size class x image area x ``candidates``
    (the strategy's settings chosen on validation: each cell trains every one)."""
    rounds = math.ceil(cells / concurrency(config, cells))
    calibration = config.get("cluster", {})
    if calibration.get("runtimes"):
        seconds = seconds_per_cell(calibration["runtimes"]).get(job.path)
        if seconds is not None:
            return max(1, math.ceil(calibration["runtime_margin"] * seconds * rounds / 60)) * attempt
    full, fewshot, _ = SIZE_CLASSES[size_class(config["models"][job.model]["arch"])]
    minutes = full if job.group == "full" else fewshot
    area = (grid.model_img_size(config, job.model) / 224) ** 2
    return max(1, round(minutes * max(area, 0.25) * rounds * candidates)) * attempt


def mem_mb(config: dict, job: grid.Job, cells: int, attempt: int = 1) -> int:
    """Host memory (MB) for a job of ``cells`` cells: size class x the cells it trains at a time x attempt."""
    return SIZE_CLASSES[size_class(config["models"][job.model]["arch"])][2] * concurrency(config, cells) * attempt


def group(job: grid.Job) -> str | None:
    """Slurm batch of a job: few-shot jobs (many short cells) are packed together by the profile
    (``group-components``); a full-data job is a Slurm job of its own."""
    return None if job.group == "full" else FEWSHOT_GROUP
