"""How well `snakemake cost` projects a grid: from a pilot, and from FLOPs alone, against the measured run.

    .venv/bin/python bench/cost.py    # about 10 min on 2 cores; writes bench/results/cost.json

A demo-sized grid of two synthetic tasks (a small one and one three times larger), two tiny models and four
strategies, full data and few-shot, runs in a temporary folder in two steps:
1. `snakemake pilot`: every job of the small task (the pilot task), and of the large task only those of
   (tiny_vit, lp), which give its sizes; then `snakemake cost` projects the large task's other
   (model, strategy) pairs ("scaled": each pair's cost fitted on the small task, at the large task's sizes);
2. the rest of the grid, after which every cell is measured.
It prints, per pair of the large task, projected and measured seconds and their ratio, and the total.

Then the FLOP model (``ftbench.plan.flop_cost``) on the same cells: this CPU's achieved FLOP rate is calibrated on
one (model, strategy) (``--calibrate``), every other trained pair's cells are projected as their FLOPs / that
rate, and compared with their measured seconds: with the epochs the cells ran (the pair's mean, as after a
pilot) and with max_epochs (no pilot). The figures go, with the commit, to bench/results/cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["fft", "lp", "lora_r8", "bitfit"]
RESULTS = ROOT / "bench" / "results" / "cost.json"


def config(patients: dict[str, int]) -> dict:
    """The demo preset with one synthetic dataset and task per entry of ``patients``."""
    demo = yaml.safe_load((ROOT / "workflow/presets/demo.yaml").read_text())
    dataset, task = demo["datasets"]["synthetic"], demo["tasks"]["synthetic_outcome"]
    demo["datasets"] = {
        name: dataset | {"synthetic": dataset["synthetic"] | {"patients": n}} for name, n in patients.items()
    }
    demo["tasks"] = {name: task | {"dataset": name} for name in patients}
    demo["benchmark"] = demo["benchmark"] | {"tasks": list(patients), "strategies": STRATEGIES}
    demo["regimes"]["fewshot"] = {"k": [4], "repetitions": 2}
    return demo


def snakemake(workdir: Path, cores: int, *targets: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        str(cores),
        *targets,
        "--quiet",
        "rules",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)


def pilot_check(projected: pl.DataFrame, measured: pl.DataFrame) -> dict:
    """The pilot's projection of the large task's other pairs against their measured seconds."""
    both = (
        projected.filter(pl.col("task") == "large", pl.col("source") == "scaled")
        .join(measured.select("cell", pl.col("seconds").alias("measured")), on="cell")
        .group_by("model", "strategy")
        .agg(
            pl.len().alias("cells"),
            pl.col("seconds").sum().alias("projected_s"),
            pl.col("measured").sum().alias("measured_s"),
        )
        .with_columns((pl.col("projected_s") / pl.col("measured_s")).alias("ratio"))
        .sort("model", "strategy")
    )
    with pl.Config(tbl_rows=-1, float_precision=2):
        print("[cost] large task (3x the patients), pairs projected from the small task's cells:")
        print(both)
    before, after = projected["seconds"].sum(), measured["seconds"].sum()
    print(
        f"[cost] whole grid, {projected.height} cells: {before / 60:.1f} min projected after the pilot "
        f"({projected.filter(pl.col('source') == 'measured').height} cells measured), {after / 60:.1f} min measured "
        f"in the end: {before / after:.2f}"
    )
    total = both.select(pl.col("projected_s").sum() / pl.col("measured_s").sum()).item()
    print(
        f"[cost] projected / measured, all {both['cells'].sum()} projected cells: {total:.2f}; "
        f"per pair from {both['ratio'].min():.2f} to {both['ratio'].max():.2f}"
    )
    return {
        "projected_cells": int(both["cells"].sum()),
        "ratio": total,
        "pair_ratio_min": both["ratio"].min(),
        "pair_ratio_max": both["ratio"].max(),
        "grid_cells": projected.height,
        "grid_projected_min": before / 60,
        "grid_measured_min": after / 60,
        "pairs": both.to_dicts(),
    }


def flop_check(work: Path, calibrate: tuple[str, str]) -> dict:
    """The FLOP model against the measured cells. On the ``calibrate`` pair's cells, this CPU's achieved FLOP rate
    (FLOPs / seconds) and, second, a start-up per cell with a rate (a least-squares line through the cells, full
    data and few-shot); every other pair's cells projected with each and compared with their measured seconds,
    with the epochs the cells ran (each pair's mean, as after a pilot) and with max_epochs (no pilot)."""
    import numpy as np
    from scipy.optimize import nnls

    from ftbench.plan import flop_cost
    from ftbench.plan.config import load

    cfg = load(ROOT / "config.yaml", work / "config.yaml")
    cells = pl.read_parquet(work / "results/cells.parquet").filter(pl.col("status") == "ok")
    timed = cells.select(
        "cell",
        "model",
        "strategy",
        "wall_seconds",
        (pl.col("train_seconds") + pl.col("check_seconds")).alias("epoch_seconds"),
    )
    mine = (pl.col("model") == calibrate[0]) & (pl.col("strategy") == calibrate[1])
    final = (pl.col("n_val") + pl.col("n_test")) * pl.col("gflops") * 1e9 * pl.col("candidates")  # after the epochs
    out: dict = {"calibrated_on": "/".join(calibrate)}
    fit = None
    for label, pilot in (("pilot_epochs", cells), ("max_epochs", cells.head(0))):
        est = flop_cost.estimate(cfg, pilot, work / "results", flop_rate=1.0, startup=0.0).cells  # seconds = FLOPs
        both = est.join(timed, on="cell").with_columns(  # a cell on the embedding cache runs no epochs on the backbone
            pl.when(pl.col("passes") > 0).then(pl.col("flops") - final).otherwise(0.0).alias("epoch_flops")
        )
        if fit is None:  # calibrated once, on the epochs the cells ran
            ref = both.filter(mine)
            rate = ref["flops"].sum() / ref["wall_seconds"].sum()
            (startup, inverse), _ = nnls(
                np.column_stack([np.ones(ref.height), ref["flops"].to_numpy()]), ref["wall_seconds"].to_numpy()
            )
            epoch_rate = ref["epoch_flops"].sum() / ref["epoch_seconds"].sum()
            fit = {
                "rate_gflop_s": rate / 1e9,
                "startup_s": startup,
                "rate_with_startup_gflop_s": 1 / inverse / 1e9,
                "epoch_rate_gflop_s": epoch_rate / 1e9,
            }
            print(
                f"[cost] FLOP model calibrated on {'/'.join(calibrate)} ({ref.height} cells): "
                f"{rate / 1e9:.2f} GFLOP/s over whole cells; {startup:.2f} s per cell + "
                f"{1 / inverse / 1e9:.2f} GFLOP/s; {epoch_rate / 1e9:.2f} GFLOP/s over their epochs alone"
            )
        pairs = (
            both.filter(~mine)
            .group_by("model", "strategy")
            .agg(
                pl.len().alias("cells"),
                pl.col("wall_seconds").sum().alias("measured_s"),
                (pl.col("flops").sum() / rate).alias("flops_s"),
                (pl.len() * startup + pl.col("flops").sum() * inverse).alias("startup_flops_s"),
                pl.col("epoch_seconds").sum(),
                (pl.col("epoch_flops").sum() / epoch_rate).alias("epoch_flops_s"),
            )
            .with_columns(
                (pl.col("flops_s") / pl.col("measured_s")).alias("ratio"),
                (pl.col("startup_flops_s") / pl.col("measured_s")).alias("ratio_with_startup"),
                (pl.col("epoch_flops_s") / pl.col("epoch_seconds")).alias("epoch_ratio"),
            )
            .sort("model", "strategy")
        )
        trained = pairs.filter(pl.col("flops_s") > 0)  # cells on the embedding cache: no FLOPs, start-up alone
        sums = {
            name: trained[name].sum()
            for name in ("measured_s", "flops_s", "startup_flops_s", "epoch_seconds", "epoch_flops_s")
        }
        summary = {
            "cells": int(trained["cells"].sum()),
            "ratio": sums["flops_s"] / sums["measured_s"],
            "ratio_with_startup": sums["startup_flops_s"] / sums["measured_s"],
            "epoch_ratio": sums["epoch_flops_s"] / sums["epoch_seconds"],
            **{
                f"pair_{name}": [trained[name].min(), trained[name].max()]
                for name in ("ratio", "ratio_with_startup", "epoch_ratio")
            },
            "pairs": pairs.to_dicts(),
        }
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, float_precision=2):
            print(f"[cost] FLOP model, epochs: {label}")
            print(pairs)
        print(
            f"[cost] FLOP model ({label}), projected / measured over the {summary['cells']} cells of the other "
            f"trained pairs: {summary['ratio']:.2f} from FLOPs alone (per pair {summary['pair_ratio'][0]:.2f} to "
            f"{summary['pair_ratio'][1]:.2f}), {summary['ratio_with_startup']:.2f} with the start-up (per pair "
            f"{summary['pair_ratio_with_startup'][0]:.2f} to {summary['pair_ratio_with_startup'][1]:.2f}); their "
            f"epochs alone {summary['epoch_ratio']:.2f} (per pair {summary['pair_epoch_ratio'][0]:.2f} to "
            f"{summary['pair_epoch_ratio'][1]:.2f})"
        )
        out[label] = summary
    ran = cells.filter(pl.col("epochs") > 0)["epochs"].mean() / cfg["training"]["max_epochs"]
    print(
        f"[cost] cells ran {ran:.2f} of max_epochs on average (cfg: max_epochs {cfg['training']['max_epochs']}, "
        f"patience {cfg['training']['patience']})"
    )
    return out | fit | {"mean_epochs_over_max": ran}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", help="run there and keep it (default: a temporary folder)")
    parser.add_argument("--calibrate", default="tiny_resnet/fft", help="model/strategy the FLOP rate is fitted on")
    args = parser.parse_args()
    started, code = datetime.now(UTC), commit()  # the code measured: as it is when the run starts
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.yaml").write_text(yaml.safe_dump(config({"small": 80, "large": 240})))
        snakemake(work, args.cores, "pilot")
        snakemake(work, args.cores, "cost")
        projected = pl.read_csv(work / "results/partial/cost_cells.csv")
        (work / "results/partial/cost_cells.csv").rename(work / "results/partial/cost_cells_pilot.csv")
        snakemake(work, args.cores, "all")
        snakemake(work, args.cores, "cost")
        measured = pl.read_csv(work / "results/partial/cost_cells.csv")
        figures = {
            "pilot": pilot_check(projected, measured),
            "flops": flop_check(work, tuple(args.calibrate.split("/"))),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python bench/cost.py",
                "commit": code,
                "started": started.isoformat(),
                "machine": f"{platform.processor() or platform.machine()}, {args.cores} cores",
                "load_average": {"start": load, "end": os.getloadavg()[0]},  # a shared machine
                **figures,
            },
            indent=1,
            default=float,
        )
        + "\n"
    )
    print(f"[cost] figures written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
