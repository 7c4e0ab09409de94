"""How well `snakemake cost` projects a grid from a pilot: projection vs the measured run, side by side.

    .venv/bin/python bench/cost.py    # about 10 min on 2 cores

A demo-sized grid of two synthetic tasks (a small one and one three times larger), two tiny models and four
strategies, full data and few-shot, runs in a temporary folder in two steps:
1. `snakemake pilot`: every job of the small task (the pilot task), and of the large task only those of
   (tiny_vit, lp), which give its sizes; then `snakemake cost` projects the large task's other
   (model, strategy) pairs ("scaled": each pair's cost fitted on the small task, at the large task's sizes);
2. the rest of the grid, after which every cell is measured.
It prints, per pair of the large task, projected and measured seconds and their ratio, and the total.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["fft", "lp", "lora_r8", "bitfit"]


def config(patients: dict[str, int]) -> dict:
    """The demo preset with one synthetic dataset and task per entry of ``patients``."""
    demo = yaml.safe_load((ROOT / "workflow/presets/demo.yaml").read_text())
    dataset, task = demo["datasets"]["synthetic"], demo["tasks"]["synthetic_outcome"]
    demo["datasets"] = {name: dataset | {"synthetic": dataset["synthetic"] | {"patients": n}}
                        for name, n in patients.items()}
    demo["tasks"] = {name: task | {"dataset": name} for name in patients}
    demo["benchmark"] = demo["benchmark"] | {"tasks": list(patients), "strategies": STRATEGIES}
    demo["regimes"]["fewshot"] = {"k": [4], "repetitions": 2}
    return demo


def snakemake(workdir: Path, cores: int, *targets: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile",
           str(workdir / "config.yaml"), "--cores", str(cores), *targets, "--quiet", "rules"]
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", help="run there and keep it (default: a temporary folder)")
    args = parser.parse_args()
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
    both = (projected.filter(pl.col("task") == "large", pl.col("source") == "scaled")
            .join(measured.select("cell", pl.col("seconds").alias("measured")), on="cell")
            .group_by("model", "strategy").agg(pl.len().alias("cells"), pl.col("seconds").sum().alias("projected_s"),
                                               pl.col("measured").sum().alias("measured_s"))
            .with_columns((pl.col("projected_s") / pl.col("measured_s")).alias("ratio")).sort("model", "strategy"))
    with pl.Config(tbl_rows=-1, float_precision=2):
        print("[cost] large task (3x the patients), pairs projected from the small task's cells:")
        print(both)
    before, after = projected["seconds"].sum(), measured["seconds"].sum()
    print(f"[cost] whole grid, {projected.height} cells: {before / 60:.1f} min projected after the pilot "
          f"({projected.filter(pl.col('source') == 'measured').height} cells measured), {after / 60:.1f} min measured "
          f"in the end: {before / after:.2f}")
    total = both.select(pl.col("projected_s").sum() / pl.col("measured_s").sum()).item()
    print(f"[cost] projected / measured, all {both['cells'].sum()} projected cells: {total:.2f}; "
          f"per pair from {both['ratio'].min():.2f} to {both['ratio'].max():.2f}")


if __name__ == "__main__":
    main()
