"""What each strategy adds to the demo: its training jobs (every fold of a (model, regime group)), timed
side by side in one run, exactly as the train rule runs them.

Make the demo's inputs first (the script names any that are missing), then:

    .venv/bin/python bench/strategy_cells.py [--preset workflow/presets/demo.yaml] [--strategies lp_ft vpt ...]
    .venv/bin/python bench/strategy_cells.py --strategies lp_ft --compare-cache   # frozen epochs from the cache

Prints per strategy its jobs and cells, the wall time of its jobs, the ratio to FFT's, what it adds to
the demo on its cores (jobs run side by side, one thread each), and its cells' own seconds (without the jobs'
start-up). Default: the preset's selected strategies.
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

from record import record  # noqa: E402

from ftbench.plan import grid  # noqa: E402
from ftbench.plan.config import load  # noqa: E402


def job_args(config: dict, job: grid.Job) -> dict[str, str]:
    """The command-line arguments the train rule gives ``job`` for its inputs (``grid.job_inputs``)."""
    return {"task-table" if name == "table" else name: path for name, path in grid.job_inputs(config, job).items()}


def time_job(config: dict, job: grid.Job, cells: list, out: Path) -> tuple[float, float]:
    """Wall seconds of the job's process, and the sum of its cells' own seconds (run.json's wall_seconds: the
    cells without the process's start-up)."""
    settings = json.dumps(grid.job_settings(config, job, cells), sort_keys=True)
    args = [f"--{k}={v}" for k, v in job_args(config, job).items()]
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
    wall = time.perf_counter() - start
    return wall, sum(json.loads(f.read_text())["wall_seconds"] for f in (out / "cells").rglob("run.json"))


def time_strategy(config: dict, name: str, tmp: Path) -> tuple[int, int, float, float]:
    """(jobs, cells, job seconds, cell seconds) of ``name``'s training jobs under ``config``."""
    mine = {job: cells for job, cells in grid.jobs(config).items() if job.strategy == name}
    times = [time_job(config, job, cells, tmp / job.path) for job, cells in mine.items()]
    return len(mine), sum(map(len, mine.values())), sum(t[0] for t in times), sum(t[1] for t in times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=str(ROOT / "workflow" / "presets" / "demo.yaml"))
    p.add_argument("--strategies", nargs="*", help="default: the preset's selected strategies")
    p.add_argument("--cores", type=int, default=2, help="cores the demo runs on (make demo: 2)")
    p.add_argument(
        "--compare-cache",
        action="store_true",
        help="also time each strategy with training.embedding_cache off (frozen passes through the backbone), "
        "side by side, and record both in bench/results/strategy_cells.json",
    )
    args = p.parse_args()
    config = load(ROOT / "config.yaml", args.preset)
    names = args.strategies or list(config["benchmark"]["strategies"])
    if "fft" not in names:
        names = ["fft", *names]  # the reference of the ratios
    config["benchmark"]["strategies"] = names
    uncached = config | {"training": config["training"] | {"embedding_cache": False}}
    missing = sorted(
        {v for job in grid.jobs(config) for v in job_args(config, job).values() if not (ROOT / v).exists()}
    )
    if missing:
        sys.exit(f"make the demo inputs first (snakemake --configfile {args.preset} <files>): {missing}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            jobs, cells, seconds, cell_seconds = time_strategy(config, name, Path(tmp) / "cache")
            row = {"strategy": name, "kind": config["strategies"][name]["kind"], "jobs": jobs, "cells": cells}
            row |= {"seconds": seconds, "cell_seconds": cell_seconds}
            if args.compare_cache:
                _, _, seconds_off, cell_seconds_off = time_strategy(uncached, name, Path(tmp) / "no_cache")
                row |= {"seconds_without_cache": seconds_off, "cell_seconds_without_cache": cell_seconds_off}
            rows.append(row)
            print(f"{name:20s} {seconds:6.1f} s", file=sys.stderr, flush=True)
    fft = next(r["seconds"] for r in rows if r["strategy"] == "fft")
    header = f"{'strategy':20s} {'kind':19s} {'jobs':>4s} {'cells':>5s} {'job s':>7s} {'vs fft':>7s} {'demo +s':>8s}"
    header += f" {'cell s':>7s}"
    print(header + (f" {'no cache: job s':>15s} {'cell s':>7s} {'cell speed-up':>13s}" if args.compare_cache else ""))
    for r in rows:
        line = f"{r['strategy']:20s} {r['kind']:19s} {r['jobs']:4d} {r['cells']:5d} {r['seconds']:7.1f} "
        line += f"{r['seconds'] / fft:7.2f} {r['seconds'] / args.cores:8.0f} {r['cell_seconds']:7.1f}"
        if args.compare_cache:
            line += f" {r['seconds_without_cache']:15.1f} {r['cell_seconds_without_cache']:7.1f}"
            line += f" {r['cell_seconds_without_cache'] / r['cell_seconds']:13.2f}"
        print(line)
    if args.compare_cache:
        record("strategy_cells", {"preset": Path(args.preset).name, "rows": rows})


if __name__ == "__main__":
    main()
