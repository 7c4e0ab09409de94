"""Training cells learn: on a strongly separable synthetic task they beat chance on held-out patients."""

import json

import polars as pl
import pytest
from conftest import cell_settings

from ftbench.train.cell import run_cell


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
    settings = cell_settings(
        "test_vit", "lora", 3e-3, training={"max_epochs": 3, "augment": True}, strategy={"rank": 4}
    )
    _, _, first = _run(synthetic_data, tmp_path / "a", settings)
    _, _, second = _run(synthetic_data, tmp_path / "b", settings)
    assert first["prob"].to_list() == second["prob"].to_list()


def test_divergence_is_recorded_as_a_failed_cell(synthetic_data, tmp_path):
    settings = cell_settings("test_resnet", "fft", 1e12, training={"max_epochs": 3})
    run, metrics, preds = _run(synthetic_data, tmp_path, settings)
    assert metrics["status"] == "failed" and "loss" in metrics["error"]
    assert "mcc" not in metrics and preds["prob"].is_nan().all()


@pytest.mark.parametrize("validation", ["kshot", "full", "none"])
def test_a_k_shot_cell_learns_and_selects_from_at_most_its_label_budget(synthetic_data, tmp_path, validation):
    """True few-shot (Perez et al. 2021): under kshot a K-shot cell trains on K patients per class and validates
    (early stopping, threshold) on another K per class, never more than 2K labelled patients in a part; full
    uses the fold's whole validation part, and says so; none validates on nothing (max_epochs, threshold 0.5)."""
    from ftbench import splits

    k, table = 2, pl.read_parquet(synthetic_data["task_path"])
    draws = tmp_path / "k2.parquet"
    splits.fewshot_draws(table, pl.read_parquet(synthetic_data["split"]), k, 1, 0).write_parquet(draws)
    settings = cell_settings(
        "test_resnet",
        "fft",
        3e-3,
        training={"max_epochs": 4},
        regime={"name": "k2r0", "k": k, "repetition": 0, "validation": validation},
    )
    out = tmp_path / "cell"
    run = run_cell(
        settings,
        synthetic_data["task_path"],
        synthetic_data["split"],
        synthetic_data["store"],
        str(out),
        fewshot=str(draws),
    )
    used = run["labels_used"]
    assert used["train_patients"] == 2 * k
    fold_val = pl.read_parquet(synthetic_data["split"]).filter((pl.col("fold") == 0) & (pl.col("part") == "val"))
    assert used["val_patients"] == {"kshot": 2 * k, "full": fold_val.height, "none": 0}[validation]
    assert fold_val.height > 2 * k  # so that "full" really is more than the budget
    metrics = json.loads((out / "metrics.json").read_text())
    if validation == "none":
        assert metrics["threshold"] == 0.5 and run["epochs"] == 4


def test_a_listed_setting_is_chosen_on_validation(synthetic_data, tmp_path):
    """head_lr: [1e-2, 1e-7]: both candidates train, the one with the lower validation loss is kept (and its test
    predictions reported); a cell rerun after the first candidate finished trains only the second."""
    settings = cell_settings("test_resnet", "lp", 1e-2, training={"max_epochs": 4}, strategy={"head_lr": [1e-2, 1e-7]})
    assert [c["strategy"]["head_lr"] for c in settings["candidates"]] == [1e-2, 1e-7]
    run, metrics, preds = _run(synthetic_data, tmp_path, settings)
    record = run["candidates"]
    assert [c["strategy"]["head_lr"] for c in record] == [1e-2, 1e-7] and all(c["status"] == "ok" for c in record)
    chosen = min(range(2), key=lambda i: record[i]["val_loss"])
    assert [c["chosen"] for c in record] == [i == chosen for i in range(2)] and chosen == 0  # lr 1e-7 learns nothing
    assert run["history"]["best_val_loss"] == record[0]["val_loss"]
    single = cell_settings("test_resnet", "lp", 1e-2, training={"max_epochs": 4}, strategy={"head_lr": 1e-2})
    _, _, alone = _run(synthetic_data, tmp_path / "single", single)
    assert preds["prob"].to_list() == alone["prob"].to_list()  # the chosen candidate, as if trained alone
    # a finished candidate is read back, not trained again: marked worse on disk, the rerun chooses the other
    done = tmp_path / "cell" / "candidate0.json"
    done.write_text(json.dumps(json.loads(done.read_text()) | {"val_loss": 1e9}))
    rerun, _, _ = _run(synthetic_data, tmp_path, settings)
    assert [c["chosen"] for c in rerun["candidates"]] == [False, True]
