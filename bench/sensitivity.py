"""Do strategy rankings depend on our learning rates, or on the BatchNorm policy? (issue 22, parts 4 and 5)

The demo grid cut to its full-data regime and 3 folds (synthetic data, tiny_vit and tiny_resnet, the demo's 8
strategies: 48 cells) is run once per variant, side by side in one invocation, each in its own work directory:

- ``lr x1/3``, ``lr x1``, ``lr x3``: every learning rate of every strategy (``lr``, ``head_lr``, ``lp_lr``) scaled;
- ``bn keep``: lr x1, but every cell keeps the BatchNorm statistics its backbone came with
  (``training.batchnorm_min_images`` above any cell's size), as linear probing does; ``lr x1`` re-estimates them
  (the default, 0).

For each (model, regime) it ranks the strategies by mean MCC over folds and prints Kendall's tau (scipy) between
the rankings of two variants. Figures go to bench/results/sensitivity.json.

    .venv/bin/python bench/sensitivity.py            # ~12 min on 2 idle cores
    .venv/bin/python bench/sensitivity.py --variants "lr x1" "bn keep"
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml
from record import record
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workflow" / "presets" / "demo.yaml"
RATES = ("lr", "head_lr", "lp_lr")  # every learning rate a strategy entry can hold
LR_FACTORS = {"lr x1/3": 1 / 3, "lr x1": 1.0, "lr x3": 3.0}
BN_KEEP = {"training": {"batchnorm_min_images": 10**9}}
GRID = {"regimes": {"fewshot": None}, "validation": {"folds": 3}}  # every variant: full data, 3 folds


def scaled(demo: dict, factor: float) -> dict:
    """The demo's selected strategies with every learning rate times ``factor``."""
    chosen = demo["benchmark"]["strategies"]
    return {
        "strategies": {
            name: {key: value * factor for key, value in demo["strategies"][name].items() if key in RATES}
            for name in chosen
        }
    }


def variants(demo: dict) -> dict[str, dict]:
    out = {name: {**GRID, **scaled(demo, factor)} for name, factor in LR_FACTORS.items()}
    out["bn keep"] = {**GRID, **BN_KEEP}
    return out


def run(workdir: Path, overrides: dict, cores: int) -> pl.DataFrame:
    """Run the demo with ``overrides`` in ``workdir``; the summary table (mean over folds per strategy)."""
    extra = workdir / "variant.yaml"
    extra.write_text(yaml.safe_dump(overrides))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", str(cores)]
    cmd += ["--configfile", str(DEMO), str(extra), "--quiet", "all"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"snakemake failed in {workdir}:\n{proc.stderr[-4000:]}")
    return pl.read_parquet(workdir / "results" / "summary.parquet")


def taus(summaries: dict[str, pl.DataFrame], metric: str) -> list[dict]:
    """Kendall's tau between every two variants' strategy rankings, per (task, model, regime group)."""
    rows = []
    keys = ["task", "model", "regime_group"]
    first = next(iter(summaries.values()))
    for key in first.select(keys).unique().sort(keys).iter_rows():
        where = pl.all_horizontal(pl.col(k) == v for k, v in zip(keys, key))
        scores = {
            name: dict(s.filter(where).select("strategy", f"{metric}_mean").iter_rows())
            for name, s in summaries.items()
        }
        for a, b in itertools.combinations(scores, 2):
            common = sorted(set(scores[a]) & set(scores[b]))
            tau = kendalltau([scores[a][s] for s in common], [scores[b][s] for s in common]).statistic
            rows.append({**dict(zip(keys, key)), "a": a, "b": b, "strategies": len(common), "tau": tau})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo = yaml.safe_load(DEMO.read_text())
    every = variants(demo)
    parser.add_argument("--variants", nargs="+", default=list(every), choices=list(every))
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    summaries, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="ftbench-sensitivity-") as tmp:
        for i, name in enumerate(args.variants):
            start = time.perf_counter()
            workdir = Path(tmp) / f"v{i}"
            workdir.mkdir()
            summaries[name] = run(workdir, every[name], args.cores)
            seconds[name] = round(time.perf_counter() - start, 1)
            print(f"{name}: {seconds[name]} s", flush=True)
    figures = {"variants": {n: every[n] for n in args.variants}, "seconds": seconds}
    for metric in ("mcc", "roc_auc"):
        figures[f"kendall_tau_{metric}"] = taus(summaries, metric)
    figures["mcc_mean"] = {
        name: s.select("model", "regime_group", "strategy", "mcc_mean").sort("model", "regime_group", "strategy").rows()
        for name, s in summaries.items()
    }
    for row in figures["kendall_tau_mcc"]:
        print(f"{row['model']:12} {row['regime_group']:5} {row['a']:8} vs {row['b']:8}  tau(MCC) = {row['tau']:.2f}")
    print("wrote", record("sensitivity", figures))


if __name__ == "__main__":
    main()
