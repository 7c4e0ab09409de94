"""Nothing lost: a training job killed mid-epoch resumes from its saved state and ends as if never stopped."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import cell_settings

from ftbench.plan.grid import CELL_FILES


def _job(settings: dict) -> dict:
    shared = {k: v for k, v in settings.items() if k not in ("regime", "fold")}
    return shared | {"group": "full", "cells": [{"regime": settings["regime"], "fold": 0, "leaf": "fold0"}]}


def _train(data: dict, job: dict, out: Path, checkpoints: Path, *args: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "ftbench",
        "train",
        "--job",
        json.dumps(job),
        "--task-table",
        data["task_path"],
        "--split",
        data["split"],
        "--store",
        data["store"],
        "--out-dir",
        str(out),
        "--checkpoints",
        str(checkpoints),
        *args,
    ]
    env = dict(os.environ, FTBENCH_CHECKPOINT_SECONDS="0", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 300) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if text in line:
            return lines
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"'{text}' never appeared:\n{''.join(lines)}")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 75), (signal.SIGUSR1, 75)])
def test_killed_job_resumes_with_identical_predictions(synthetic_data, tmp_path, sig, code):
    settings = cell_settings("test_resnet", "fft", 1e-3, training={"max_epochs": 10, "patience": 10, "augment": True})
    job = _job(settings)
    reference = _train(synthetic_data, job, tmp_path / "ref", tmp_path / "ref_ckpt")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    first = _train(synthetic_data, job, out, checkpoints)
    _wait_for(first, "epoch   3")
    time.sleep(0.05)  # inside epoch 4
    first.send_signal(sig)
    assert first.wait(timeout=300) == code
    log = first.stderr.read()
    assert "run the job again to resume" in log
    assert (checkpoints / "fold0" / "state.pt").is_file() and not (out / "fold0").exists()

    second = _train(synthetic_data, job, out, checkpoints)
    resumed = "".join(_wait_for(second, "resumed from"))
    assert second.wait(timeout=600) == 0, second.stderr.read()
    assert "epoch   0 " not in resumed  # it did not start over
    got = pl.read_parquet(out / "fold0" / "predictions.parquet")
    want = pl.read_parquet(tmp_path / "ref" / "fold0" / "predictions.parquet")
    assert got["prob"].to_list() == want["prob"].to_list()
    history = json.loads((out / "fold0" / "run.json").read_text())["history"]["epochs"]
    assert [h["epoch"] for h in history] == list(range(len(history)))
    assert not checkpoints.exists()  # a finished job leaves no state behind


SIDE_BY_SIDE = ("--concurrent-cells", "3", "--threads", "3")  # each of the 3 cells with 1 thread, as one by one
LEAVES = ("fold0", "fold1", "fold2")


@pytest.fixture(scope="module")
def three_cells(synthetic_data, tmp_path_factory) -> dict:
    """A job of three cells, and their results trained one by one: what a job that trains them side by side,
    stopped or not, must end with."""
    settings = cell_settings("test_resnet", "fft", 1e-3, training={"max_epochs": 8, "patience": 8, "augment": True})
    job = _job(settings) | {"cells": [{"regime": {"name": "full"}, "fold": f, "leaf": f"fold{f}"} for f in range(3)]}
    ref = tmp_path_factory.mktemp("one_by_one")
    reference = _train(synthetic_data, job, ref / "out", ref / "ckpt")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    return {"job": job, "probs": {leaf: _probs(ref / "out" / leaf) for leaf in LEAVES}}


def _probs(cell: Path) -> list[float]:
    return pl.read_parquet(cell / "predictions.parquet")["prob"].to_list()


def _ends_as_one_by_one(data: dict, three_cells: dict, out: Path, checkpoints: Path) -> str:
    """Run the job again to its end: its cells equal those trained one by one; the rerun's log."""
    again = _train(data, three_cells["job"], out, checkpoints, *SIDE_BY_SIDE)
    _, log = again.communicate(timeout=600)
    assert again.returncode == 0, log
    for leaf in LEAVES:
        assert _probs(out / leaf) == three_cells["probs"][leaf], leaf
        history = json.loads((out / leaf / "run.json").read_text())["history"]["epochs"]
        assert [h["epoch"] for h in history] == list(range(len(history)))
    assert not checkpoints.exists()
    return log


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, when",
    [
        (signal.SIGUSR1, "cell 3/3"),  # the workers are still starting: no training handles a signal yet
        (signal.SIGTERM, "epoch   2"),  # mid-epoch
    ],
)
def test_a_stopped_job_stops_every_cell_it_trains_side_by_side_and_resumes_them(
    synthetic_data, three_cells, tmp_path, sig, when
):
    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    first = _train(synthetic_data, three_cells["job"], out, checkpoints, *SIDE_BY_SIDE)
    _wait_for(first, when)
    first.send_signal(sig)  # to the job alone, as in a local run: it passes the signal on to its workers
    _, log = first.communicate(timeout=300)
    assert first.returncode == 75, log
    assert "run the job again to resume" in log and not out.exists()
    saved = [leaf for leaf in LEAVES if (checkpoints / leaf / "state.pt").is_file()]
    if sig == signal.SIGUSR1:  # every cell finished an epoch, saved it and stopped
        assert saved == list(LEAVES) and log.count("stopped after epoch") == 3
    assert saved
    log = _ends_as_one_by_one(synthetic_data, three_cells, out, checkpoints)
    assert log.count("resumed from") == len(saved)


@pytest.mark.slow
def test_a_worker_killed_mid_cell_leaves_the_others_to_finish(synthetic_data, three_cells, tmp_path):
    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    first = _train(synthetic_data, three_cells["job"], out, checkpoints, *SIDE_BY_SIDE)
    lines = "".join(_wait_for(first, "[fold0]: epoch   1"))
    worker = int(re.search(r"cell 1/3: fold0 \(worker (\d+)\)", lines).group(1))
    os.kill(worker, signal.SIGKILL)  # as the out-of-memory killer does
    _, log = first.communicate(timeout=300)
    assert first.returncode == 1, log
    assert "cell fold0: its worker process died (exit code -9" in log
    for leaf in ("fold1", "fold2"):  # trained to their end beside it, kept for the rerun
        assert all((checkpoints / leaf / name).is_file() for name in CELL_FILES), leaf
    assert (checkpoints / "fold0" / "state.pt").is_file()
    log = _ends_as_one_by_one(synthetic_data, three_cells, out, checkpoints)
    assert log.count("resumed from") == 1 and log.count("already finished") == 2


def test_finished_cells_of_a_dead_job_are_not_trained_again(synthetic_data, tmp_path):
    from ftbench.train.job import run_job

    settings = cell_settings("test_resnet", "lp", 1e-2, training={"max_epochs": 2})
    job = _job(settings) | {"cells": [{"regime": {"name": "full"}, "fold": f, "leaf": f"fold{f}"} for f in (0, 1)]}
    checkpoints = tmp_path / "ckpt"
    run_job(
        job,
        synthetic_data["task_path"],
        synthetic_data["split"],
        synthetic_data["store"],
        str(tmp_path / "a"),
        str(checkpoints),
    )
    first = (tmp_path / "a" / "fold0" / "run.json").read_text()
    # the job died after fold 0: its finished cell waits in the checkpoints folder
    (checkpoints / "fold0").mkdir(parents=True)
    for name in ("predictions.parquet", "metrics.json", "run.json"):
        (checkpoints / "fold0" / name).write_bytes((tmp_path / "a" / "fold0" / name).read_bytes())
    run_job(
        job,
        synthetic_data["task_path"],
        synthetic_data["split"],
        synthetic_data["store"],
        str(tmp_path / "b"),
        str(checkpoints),
    )
    assert (tmp_path / "b" / "fold0" / "run.json").read_text() == first  # taken over, not retrained
    assert (tmp_path / "b" / "fold1" / "metrics.json").is_file()
