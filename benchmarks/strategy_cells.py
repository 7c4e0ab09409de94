"""What each strategy adds to the demo: one training cell per (model, regime) of fold 0, timed side by side.

Runs ``python -m ftbench train`` exactly as the train rule does, on the demo's prepared data (make the
inputs first: the script names any that are missing), and prints seconds per cell, the ratio to FFT, and
the wall time that the strategy's cells add to the demo on its cores. Frozen-backbone strategies (LP) are
timed through the images here; the workflow trains them from the embedding cache, which is faster.

    python benchmarks/strategy_cells.py [--preset workflow/presets/demo.yaml] [--strategies fft lp ...]
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


def cell_inputs(config: dict, cell: grid.Cell) -> list[str]:
    dataset = config["tasks"][cell.task]["dataset"]
    args = ["--task-table", f"results/tasks/{cell.task}/images.parquet",
            "--split", f"results/splits/{cell.task}/folds.parquet",
            "--store", f"results/data/{dataset}/images_{grid.model_img_size(config, cell.model)}.npy"]
    if cell.regime != "full":
        args += ["--fewshot", f"results/splits/{cell.task}/fewshot/{cell.regime}.parquet"]
    return args


def time_cell(config: dict, cell: grid.Cell, out: Path) -> float:
    settings = json.dumps(grid.cell_settings(config, cell), sort_keys=True)
    cmd = [sys.executable, "-m", "ftbench", "train", "--settings", settings, *cell_inputs(config, cell),
           "--threads", str(config["training"]["threads"]), "--out-dir", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stderr=subprocess.DEVNULL,
                   env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=str(ROOT / "workflow" / "presets" / "demo.yaml"))
    p.add_argument("--strategies", nargs="*", help="default: every strategy of the catalogue")
    p.add_argument("--cores", type=int, default=2, help="cores the demo runs on (make demo: 2)")
    args = p.parse_args()
    config = load(ROOT / "config.yaml", args.preset)
    names = args.strategies or list(config["strategies"])
    missing = [a for c in grid.cells(config) if c.fold == 0 for a in cell_inputs(config, c)[1::2]
               if not (ROOT / a).exists()]
    if missing:
        sys.exit(f"prepare the demo inputs first (snakemake --configfile {args.preset} <files>): "
                 f"{sorted(set(missing))}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config["benchmark"]["strategies"] = [name]
            cells = grid.cells(config)
            timed = [time_cell(config, c, Path(tmp) / f"{name}-{i}") for i, c in enumerate(cells) if c.fold == 0]
            per_cell = sum(timed) / len(timed) if timed else 0.0
            rows.append((name, config["strategies"][name]["kind"], len(cells), per_cell))
            print(f"{name:20s} {per_cell:6.1f} s/cell", file=sys.stderr, flush=True)
    fft = next((r[3] for r in rows if r[1] == "fft"), None)
    print(f"{'strategy':20s} {'kind':19s} {'cells':>5s} {'s/cell':>7s} {'vs fft':>7s} {'demo +s':>8s}")
    for name, kind, n, per_cell in rows:
        ratio = f"{per_cell / fft:7.2f}" if fft else "      -"
        print(f"{name:20s} {kind:19s} {n:5d} {per_cell:7.1f} {ratio} {n * per_cell / args.cores:8.0f}")


if __name__ == "__main__":
    main()
