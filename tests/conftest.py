"""Shared fixtures: tiny synthetic data, the real Cohen sample (skipped when absent), the demo config."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# the real sample next to the checkout, or where FTBENCH_COHEN_SAMPLE says (e.g. from a git worktree elsewhere)
COHEN_SAMPLE = Path(os.environ.get("FTBENCH_COHEN_SAMPLE", ROOT.parent / "shared" / "data" / "cohen-sample"))


@pytest.fixture(scope="session")
def demo_config() -> dict:
    """config.yaml overridden by the demo preset, validated (as Snakemake would see it)."""
    from ftbench.plan.config import load

    return load(ROOT / "config.yaml", ROOT / "workflow" / "presets" / "demo.yaml")


@pytest.fixture
def raw_config() -> dict:
    """config.yaml + demo preset, merged but not validated: tests break it on purpose."""
    from ftbench.plan.config import merge

    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    return merge(base, yaml.safe_load((ROOT / "workflow" / "presets" / "demo.yaml").read_text()))


@pytest.fixture(scope="session")
def cohen_sample() -> Path:
    if not (COHEN_SAMPLE / "metadata.csv").is_file():
        pytest.skip(f"real CXR sample not found at {COHEN_SAMPLE}")
    return COHEN_SAMPLE


def make_task_table(patients: int, positive_every: int = 3, images: int = 2, centres: int = 1) -> pl.DataFrame:
    """A task table (no pixels) with several images per patient: for split tests."""
    rows = []
    for p in range(patients):
        for i in range(1 + p % images):
            rows.append(
                {
                    "row": len(rows),
                    "image_id": f"p{p}_{i}",
                    "patient_id": f"p{p}",
                    "label": int(p % positive_every == 0),
                    "centre": f"c{p % centres}",
                    "view": "PA",
                    "time": float(i),
                }
            )
    return pl.DataFrame(rows).with_columns(pl.col("label").cast(pl.Int8))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict:
    """A strongly separable synthetic dataset prepared as the workflow does: table, store, task, folds."""
    from ftbench import splits
    from ftbench.data import store, tasks
    from ftbench.data.adapters import build_table

    root = tmp_path_factory.mktemp("synthetic")
    spec = {
        "adapter": "synthetic",
        "synthetic": {
            "patients": 100,
            "images_per_patient": [1, 2],
            "signal": 1.5,
            "side": 48,
            "seed": 3,
            "positive_rate": 0.5,
        },
    }
    table, rejects = build_table("syn", spec, root)
    assert rejects.height == 0
    store_path = store.build(table, 48, root / "images_48.npy")
    # every image (not the admission image only): split, training and per-patient code must handle several a patient
    task, _ = tasks.build(table, {"dataset": "syn", "label": "outcome", "positive": ["poor"], "images": "all"}, "syn")
    task_path = root / "task.parquet"
    task.write_parquet(task_path)
    split_path = root / "folds.parquet"
    splits.kfold(task, 5, 0.2, 0, "syn").write_parquet(split_path)
    return {
        "root": root,
        "table": table,
        "task": task,
        "task_path": str(task_path),
        "split": str(split_path),
        "store": str(store_path),
    }


def cell_settings(arch: str, kind: str, lr: float, **overrides) -> dict:
    """Resolved settings of one cell, as grid.cell_settings would produce them."""
    settings = {
        "version": 1,
        "task": "syn",
        "fold": 0,
        "regime": {"name": "full"},
        "model": {"name": arch, "arch": arch, "img_size": 48},
        "strategy": {"name": kind, "kind": kind},
        "training": {
            "batch_size": 32,
            "max_epochs": 15,
            "patience": 5,
            "lr": lr,
            "weight_decay": 0.01,
            "augment": False,
            "seed": 0,
        },
    }
    for key, value in overrides.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    return resolved(settings)


def resolved(settings: dict) -> dict:
    """``settings`` with the strategy's defaults filled in, and its candidates listed, as the grid resolves them."""
    from ftbench.models.zoo import resolve
    from ftbench.plan import grid

    model = settings["model"]
    entry = resolve(model["arch"], model.get("img_size"), model.get("pretrained", False))
    candidates = grid.resolve_candidates(settings["strategy"], entry, settings["training"])
    settings = copy.deepcopy(settings) | candidates[0]
    return settings | ({"candidates": candidates} if len(candidates) > 1 else {})
