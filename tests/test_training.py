"""Training cells learn: on a strongly separable synthetic task they beat chance on held-out patients."""

import json

import polars as pl
import pytest
from conftest import cell_settings

from ftbench.cell import run_cell


def _run(data, tmp_path, settings):
    out = tmp_path / "cell"
    run = run_cell(settings, data["task_path"], data["split"], data["store"], str(out))
    return run, json.loads((out / "metrics.json").read_text()), pl.read_parquet(out / "predictions.parquet")


def test_fft_learns_the_synthetic_signal(synthetic_data, tmp_path):
    run, metrics, preds = _run(synthetic_data, tmp_path, cell_settings("test_resnet", "fft", 3e-3))
    assert metrics["status"] == "ok"
    assert metrics["mcc"] >= 0.8, metrics
    # predictions are for the held-out patients of fold 0 only
    split = pl.read_parquet(synthetic_data["split"]).filter(pl.col("fold") == 0)
    test_patients = set(split.filter(pl.col("part") == "test")["patient_id"])
    assert set(preds["patient_id"]) == test_patients
    assert run["trainable_params"] == run["total_params"]
    for key in ("wall_seconds", "peak_memory_mb", "device", "versions", "seed"):
        assert key in run


def test_same_cell_twice_gives_identical_predictions(synthetic_data, tmp_path):
    settings = cell_settings("test_vit", "lora", 3e-3, training={"max_epochs": 3, "augment": True},
                             strategy={"rank": 4})
    _, _, first = _run(synthetic_data, tmp_path / "a", settings)
    _, _, second = _run(synthetic_data, tmp_path / "b", settings)
    assert first["prob"].to_list() == second["prob"].to_list()


def test_divergence_is_recorded_as_a_failed_cell(synthetic_data, tmp_path):
    settings = cell_settings("test_resnet", "fft", 1e12, training={"max_epochs": 3})
    run, metrics, preds = _run(synthetic_data, tmp_path, settings)
    assert metrics["status"] == "failed" and "loss" in metrics["error"]
    assert "mcc" not in metrics and preds["prob"].is_nan().all()
