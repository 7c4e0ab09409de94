"""Wall time of the stats stage (ftbench.analysis.stats.compare) on a cells table the size of config.yaml's grid.

    PYTHONPATH=src python bench/stats.py
    PYTHONPATH=src python bench/stats.py --compile-cache 2   # fresh processes: empty vs primed JAX cache, alternating

6 tasks in 3 cohorts (as config.yaml's: 3 tasks share patients, 2 others, 1 alone) x 11 models in 3 families x
8 strategies (one of them, like VeRA, missing on two models), full data 5 folds and few-shot K in {1, 2, 4, 8} x
5 repetitions x 5 folds: 54,180 cells with random MCC / PR-AUC. The time includes the hierarchical model's
sampling (numpyro, JIT compilation included: the stage runs in a fresh process).
Prints the time, the table sizes and, for comparison, the time of statsmodels' Holm correction per call in
this process (it runs gc.collect() each time, which is why ftbench.analysis.stats.holm exists).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import polars as pl
from statsmodels.stats.multitest import multipletests

from ftbench.analysis import stats


def grid(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    families = {f"m{i}": ("cnn", "fm-general", "fm-biomedical")[i % 3] for i in range(11)}
    regimes = [("full", [None]), *[(f"k{k}", list(range(5))) for k in (1, 2, 4, 8)]]
    rows = []
    for task in range(6):
        for model, family in families.items():
            for s in range(8):
                if s == 5 and model in ("m0", "m3"):  # a strategy that does not run on two models of a family
                    continue
                for group, reps in regimes:
                    for r in reps:
                        for fold in range(5):
                            value = float(rng.normal(0.3 + 0.02 * s, 0.1))
                            rows.append(
                                (
                                    f"t{task}",
                                    model,
                                    f"s{s}",
                                    group if r is None else f"{group}r{r}",
                                    group,
                                    r,
                                    fold,
                                    family,
                                    "ok",
                                    value,
                                    value,
                                )
                            )
    return pl.DataFrame(rows, schema=stats.CELLS_SCHEMA, orient="row")


COHORTS = {"t0": "cohen", "t1": "cohen", "t2": "cohen", "t3": "nysbu", "t4": "nysbu", "t5": "covid19_ar"}


def compile_cache(rounds: int) -> None:
    """The stage in fresh processes, side by side: with an empty compilation cache (the first run on a machine) and
    with the one a previous run left (every later run), alternating ``rounds`` times; prints each time and the ratio."""
    times: dict[str, list[float]] = {"empty": [], "primed": []}
    with tempfile.TemporaryDirectory() as primed:
        subprocess.run([sys.executable, __file__], env=os.environ | {"FTBENCH_JAX_CACHE": primed}, check=True)
        for _ in range(rounds):
            for kind in times:
                with tempfile.TemporaryDirectory() as empty:
                    cache = primed if kind == "primed" else empty
                    start = time.perf_counter()
                    subprocess.run(
                        [sys.executable, __file__], env=os.environ | {"FTBENCH_JAX_CACHE": cache}, check=True
                    )
                    times[kind].append(time.perf_counter() - start)
                    print(f"{kind} cache: {times[kind][-1]:.1f} s (process included)", flush=True)
    empty, primed = (statistics.median(times[k]) for k in ("empty", "primed"))
    print(f"median: empty {empty:.1f} s, primed {primed:.1f} s: {empty / primed:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-cache", type=int, metavar="ROUNDS", help="compare empty and primed JAX caches")
    if (rounds := parser.parse_args().compile_cache) is not None:
        return compile_cache(rounds)
    cells = grid()
    gc.collect()  # the builder's tuples are gone: the heap is close to that of the CLI process
    start = time.perf_counter()
    result = stats.compare(cells, cohorts=COHORTS)
    took = time.perf_counter() - start
    print(
        f"{cells.height:,} cells: stats.compare {took:.1f} s; {result.friedman.height} across-task scopes, "
        f"{result.hierarchical.height} hierarchical pairs, {result.within_task.height:,} within-task pairs"
    )
    start = time.perf_counter()
    for _ in range(20):
        multipletests([0.01, 0.02, 0.03], method="holm")
    print(
        f"statsmodels multipletests(method='holm'): {(time.perf_counter() - start) / 20 * 1000:.0f} ms a call "
        f"(the stage makes one per task, model and regime group and metric)"
    )


if __name__ == "__main__":
    main()
