"""A fake results/ folder, made with numpy in seconds: cells with predictions, metrics and run records.

Each strategy has a known quality (``signal``): the test probabilities separate the classes by that
much, so the report's rankings and tests have something true to find.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from ftbench.plan.grid import Cell
from ftbench.train import metrics

MODELS = {"cnn_a": "cnn", "cnn_b": "cnn", "vit_a": "vit"}
SIGNAL = {"fft": 2.5, "lora": 1.6, "lp": 0.6}


def write_cell(
    root: Path,
    task: str,
    model: str,
    strategy: str,
    regime: str,
    fold: int,
    patients: list[int],
    positive_rate: float,
    signal: float,
    rng: np.random.Generator,
    status: str = "ok",
) -> Path:
    """One cell's three files; images of a patient share the label, ``signal`` sets how well it is predicted."""
    out = root / "cells" / Cell(task, model, strategy, regime, fold).path
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        (f"p{p}_{i}", f"p{p}", int((p * 7919 % 100) < positive_rate * 100)) for p in patients for i in range(1 + p % 2)
    ]
    labels = np.array([r[2] for r in rows])
    probs = 1 / (1 + np.exp(-(signal * (labels - 0.5) * 2 + rng.normal(0, 1, len(rows)))))
    pl.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "patient_id": [r[1] for r in rows],
            "label": pl.Series(labels, dtype=pl.Int8),
            "centre": ["c0"] * len(rows),
            "prob": probs,
        }
    ).write_parquet(out / "predictions.parquet")
    keys = {"task": task, "fold": fold, "model": model, "strategy": strategy, "regime": regime}
    patients = metrics.Patients.of([r[1] for r in rows], labels)
    result = metrics.evaluate(patients, probs, 0.5) if status == "ok" else {}
    (out / "metrics.json").write_text(
        json.dumps(keys | {"status": status, "error": None if status == "ok" else "loss is nan at epoch 2"} | result)
    )
    trainable = {"fft": 1_000_000, "lora": 50_000, "lp": 500}[strategy]
    (out / "run.json").write_text(
        json.dumps(
            keys
            | {
                "status": status,
                "trainable_params": trainable,
                "total_params": 1_000_000,
                "trainable_fraction": trainable / 1e6,
                "wall_seconds": 60.0 + trainable / 1e4,
                "peak_memory_mb": 900.0 + trainable / 1e4,
                "device": "cuda:0",
                "settings": {"model": {"arch": "test_vit", "family": MODELS[model]}},
            }
        )
    )
    return out


# A small grid for make_results(root, **ONE_TASK): one task, one CNN, three strategies of distinct strength, full
# data and 2-shot, 3 folds; the report tests then remove or corrupt some of its cells.
ONE_TASK = {
    "tasks": {"death": 0.3},
    "models": {"cnn_a": "cnn"},
    "strategies": {"fft": 2.5, "lp": 0.6, "lora": 1.6},
    "regimes": ("full", "k2r0"),
    "folds": 3,
}


def make_results(
    root: Path,
    tasks: dict[str, float] | None = None,
    models: dict[str, str] | None = None,
    strategies: dict[str, float] | None = None,
    regimes: tuple[str, ...] = ("full", "k2r0", "k2r1", "k4r0", "k4r1"),
    folds: int = 3,
    patients: int = 60,
    seed: int = 0,
    transfer: tuple[str, str] | None = None,
) -> list[str]:
    """Write a grid of fake cells, task data reports and rejects under ``root``; return the grid's cell paths.
    With ``transfer`` = (source, target), also the external validation's full-data folds under ``root/external``
    (every target patient, each strategy's signal weakened on the other cohort)."""
    tasks = tasks or {"death": 0.2, "icu": 0.45}
    models = models or MODELS
    strategies = strategies or SIGNAL
    rng = np.random.default_rng(seed)
    grid = []
    for task, rate in tasks.items():
        ids = np.arange(patients)
        for model in models:
            for strategy, signal in strategies.items():
                for regime in regimes:
                    shots = 1.0 if regime == "full" else min(1.0, 0.25 + 0.1 * int(regime[1:].split("r")[0]))
                    for fold in range(folds):
                        write_cell(
                            root, task, model, strategy, regime, fold, list(ids[fold::folds]), rate, signal * shots, rng
                        )
                        grid.append(Cell(task, model, strategy, regime, fold).path)
        report = {
            "task": task,
            "dataset": "fake",
            "label": "outcome",
            "positive": ["poor"],
            "images_policy": "all",
            "steps": {"images": 90, "with a known label": 88},
            "unlabelled_images": 2,
            "images_per_class": {"0": 60, "1": 28},
            "patients_per_class": {"0": 40, "1": 20},
            "images_per_centre": {"c0": 88},
            "images_per_view": {"PA": 80, "AP": 8},
            "images_per_patient": {"1": 30, "2": 29},
        }
        (root / "tasks" / task).mkdir(parents=True, exist_ok=True)
        (root / "tasks" / task / "data_report.json").write_text(json.dumps(report))
    (root / "data" / "fake").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "image_id": ["x1", "x2"],
            "file": ["a.png", "b.png"],
            "reason": ["unreadable image: truncated", "unreadable image: truncated"],
        }
    ).write_csv(root / "data" / "fake" / "rejects.csv")
    (root / "grid.txt").write_text("\n".join(grid) + "\n")
    if transfer:
        pair, external = "@".join(transfer), []
        for model in models:
            for strategy, signal in strategies.items():
                for fold in range(folds):
                    ids = list(range(patients))
                    write_cell(
                        root / "external", pair, model, strategy, "full", fold, ids, tasks[transfer[1]], signal / 2, rng
                    )
                    external.append(Cell(pair, model, strategy, "full", fold).path)
        (root / "external" / "grid.txt").write_text("\n".join(external) + "\n")
    return grid


def build_report(root: Path, out: Path, bootstrap: int = 200, title: str = "fake report") -> Path:
    """aggregate -> stats -> report through the CLI, as the rules run them; returns the HTML path."""
    from ftbench.cli import main

    external = root / "external" / "grid.txt"
    if external.is_file():  # external validation's folds: aggregated and compared as the rules do
        tables = root / "external"
        argv = [
            "aggregate",
            "--cells-root",
            str(tables / "cells"),
            "--grid",
            str(external),
            "--bootstrap",
            str(bootstrap),
        ]
        argv += ["--cells-out", str(tables / "cells.parquet"), "--predictions-out", str(tables / "predictions.parquet")]
        assert main([*argv, "--summary", str(tables / "summary.parquet")]) == 0
        stats = [
            "stats",
            "--cells",
            str(tables / "cells.parquet"),
            "--cohorts",
            "{}",
            "--within-task",
            "none",
            "--out-dir",
            str(tables / "stats"),
        ]
        assert main(stats) == 0
    for argv in (
        [
            "aggregate",
            "--cells-root",
            str(root / "cells"),
            "--grid",
            str(root / "grid.txt"),
            "--cells-out",
            str(out / "cells.parquet"),
            "--predictions-out",
            str(out / "predictions.parquet"),
            "--summary",
            str(out / "summary.parquet"),
            "--bootstrap",
            str(bootstrap),
        ],
        ["stats", "--cells", str(out / "cells.parquet"), "--out-dir", str(out / "stats")],
        [
            "report",
            "--cells",
            str(out / "cells.parquet"),
            "--summary",
            str(out / "summary.parquet"),
            "--predictions",
            str(out / "predictions.parquet"),
            "--stats-dir",
            str(out / "stats"),
            "--data-reports",
            *map(str, sorted((root / "tasks").glob("*/data_report.json"))),
            "--rejects",
            str(root / "data" / "fake" / "rejects.csv"),
            "--expected",
            str(root / "grid.txt"),
            "--logs",
            str(root / "logs" / "train"),
            "--bootstrap",
            str(bootstrap),
            "--title",
            title,
            "--out",
            str(out / "report" / "index.html"),
            "--figures-dir",
            str(out / "report" / "figures"),
            *(["--external", str(root / "external")] if external.is_file() else []),
        ],
    ):
        assert main(argv) == 0, argv
    return out / "report" / "index.html"
