"""What each strategy adds to the demo: its training jobs (every fold of a (model, regime group)), timed
side by side in one run, exactly as the train rule runs them.

Make the demo's inputs first (the script names any that are missing), then:

    .venv/bin/python bench/strategy_cells.py [--preset workflow/presets/demo.yaml] [--strategies lp_ft vpt ...]

Prints per strategy its jobs and cells, the wall time of its jobs, the ratio to FFT's, and what it adds to
the demo on its cores (jobs run side by side, one thread each). Default: the preset's selected strategies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ftbench import grid  # noqa: E402
from ftbench.config import load  # noqa: E402


def job_inputs(config: dict, job: grid.Job) -> dict[str, str]:
    """The train rule's inputs of ``job`` (see workflow/rules/train.smk; the demo has no weight files)."""
    dataset = config["tasks"][job.task]["dataset"]
    inputs = {
        "task-table": f"results/tasks/{job.task}/images.parquet",
        "split": f"results/splits/{job.task}/folds.parquet",
    }
    if grid.uses_cache(config, job.strategy) or grid.caches_frozen_epochs(config, job.strategy):
        inputs["embeddings"] = f"results/embeddings/{dataset}/{job.model}.npy"
    if not grid.uses_cache(config, job.strategy):
        inputs["store"] = f"results/data/{dataset}/images_{grid.model_img_size(config, job.model)}.npy"
    if job.group != "full":
        inputs["fewshot"] = f"results/splits/{job.task}/fewshot/{job.group}.parquet"
    return inputs


def time_job(config: dict, job: grid.Job, cells: list, out: Path) -> float:
    settings = json.dumps(grid.job_settings(config, job, cells), sort_keys=True)
    args = [f"--{k}={v}" for k, v in job_inputs(config, job).items()]
    cmd = [
        sys.executable,
        "-m",
        "ftbench",
        "train",
        "--job",
        settings,
        *args,
        "--threads",
        str(config["training"]["threads"]),
        "--out-dir",
        str(out / "cells"),
        "--checkpoints",
        str(out / "ckpt"),
    ]
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, cwd=ROOT, stderr=subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": str(ROOT / "src")}
    )
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=str(ROOT / "workflow" / "presets" / "demo.yaml"))
    p.add_argument("--strategies", nargs="*", help="default: the preset's selected strategies")
    p.add_argument("--cores", type=int, default=2, help="cores the demo runs on (make demo: 2)")
    p.add_argument(
        "--without-cache",
        action="store_true",
        help="training.embedding_cache off: frozen backbones (LP, LP-FT's first phase) run end to end",
    )
    args = p.parse_args()
    config = load(ROOT / "config.yaml", args.preset)
    config["training"]["embedding_cache"] = not args.without_cache
    names = args.strategies or list(config["benchmark"]["strategies"])
    if "fft" not in names:
        names = ["fft", *names]  # the reference of the ratios
    config["benchmark"]["strategies"] = names
    all_jobs = grid.jobs(config)
    missing = sorted({v for job in all_jobs for v in job_inputs(config, job).values() if not (ROOT / v).exists()})
    if missing:
        sys.exit(f"make the demo inputs first (snakemake --configfile {args.preset} <files>): {missing}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            mine = {job: cells for job, cells in all_jobs.items() if job.strategy == name}
            seconds = sum(time_job(config, job, cells, Path(tmp) / job.path) for job, cells in mine.items())
            rows.append((name, config["strategies"][name]["kind"], len(mine), sum(map(len, mine.values())), seconds))
            print(f"{name:20s} {seconds:6.1f} s", file=sys.stderr, flush=True)
    fft = next(r[4] for r in rows if r[0] == "fft")
    print(f"{'strategy':20s} {'kind':19s} {'jobs':>4s} {'cells':>5s} {'job s':>7s} {'vs fft':>7s} {'demo +s':>8s}")
    for name, kind, jobs, cells, seconds in rows:
        print(
            f"{name:20s} {kind:19s} {jobs:4d} {cells:5d} {seconds:7.1f} {seconds / fft:7.2f} {seconds / args.cores:8.0f}"
        )


if __name__ == "__main__":
    main()
