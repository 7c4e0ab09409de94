"""A training job that trains several cells at a time (``training.concurrent_cells``): the results of training
them one by one, and nothing lost when one of them fails. (Stop signals: tests/test_preemption.py.)"""

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import cell_settings

from ftbench.plan import grid
from ftbench.train.job import run_job


def job_of(settings: dict, folds) -> dict:
    """A full-data job of the cell ``settings`` over ``folds``."""
    shared = {k: v for k, v in settings.items() if k not in ("regime", "fold")}
    return shared | {
        "group": "full",
        "cells": [{"regime": {"name": "full"}, "fold": f, "leaf": f"fold{f}"} for f in folds],
    }


def results(folder: Path, leaf: str) -> dict:
    """What a cell's result is: its test probabilities, its history without the timings, its threads."""
    run = json.loads((folder / leaf / "run.json").read_text())
    epochs = [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in run["history"]["epochs"]]
    return {
        "prob": pl.read_parquet(folder / leaf / "predictions.parquet")["prob"].to_list(),
        "epochs": epochs,
        "best": (run["history"]["best_epoch"], run["history"]["best_val_loss"]),
        "threads": run["threads"],
    }


def test_cells_trained_side_by_side_equal_those_trained_one_by_one(synthetic_data, tmp_path):
    # augmentation draws from the cell's generators, BatchNorm is recalibrated: everything a cell's seeds drive
    job = job_of(cell_settings("test_resnet", "fft", 1e-3, training={"max_epochs": 3, "augment": True}), (0, 1, 2))
    data = (synthetic_data["task_path"], synthetic_data["split"], synthetic_data["store"])
    run_job(job, *data, str(tmp_path / "one"), str(tmp_path / "ckpt1"), threads=1)
    # 2 workers for 3 cells: one of them trains two cells in turn; each cell gets 2 // 2 threads as above
    run_job(job, *data, str(tmp_path / "two"), str(tmp_path / "ckpt2"), threads=2, concurrent=2)
    for leaf in ("fold0", "fold1", "fold2"):
        one, two = results(tmp_path / "one", leaf), results(tmp_path / "two", leaf)
        assert two == one, leaf
        assert len(one["epochs"]) == 3 and one["threads"] == 1
    assert not (tmp_path / "ckpt2").exists()


def test_a_failing_cell_stops_the_job_and_the_others_finished_cells_are_kept(synthetic_data, tmp_path):
    settings = cell_settings("test_resnet", "lp", 1e-2, training={"max_epochs": 2})
    data = (synthetic_data["task_path"], synthetic_data["split"], synthetic_data["store"])
    checkpoints = tmp_path / "ckpt"
    with pytest.raises(ValueError, match="fold 9: the train part has no images"):  # the split has 5 folds
        run_job(job_of(settings, (9, 0)), *data, str(tmp_path / "out"), str(checkpoints), concurrent=2)
    assert not (tmp_path / "out").exists()
    kept = (checkpoints / "fold0" / "run.json").read_text()  # the cell beside it finished its training
    run_job(job_of(settings, (0, 1)), *data, str(tmp_path / "out"), str(checkpoints), concurrent=2)
    assert (tmp_path / "out" / "fold0" / "run.json").read_text() == kept  # taken over, not trained again
    assert (tmp_path / "out" / "fold1" / "metrics.json").is_file()


def test_concurrent_cells_change_no_settings_of_a_job(demo_config):
    """It is how a job runs, not what it computes: no job's params (and so no rerun) depend on it."""
    side_by_side = {**demo_config, "training": {**demo_config["training"], "concurrent_cells": 4}}
    for job, cells in grid.jobs(demo_config).items():
        assert grid.job_settings(side_by_side, job, cells) == grid.job_settings(demo_config, job, cells)
