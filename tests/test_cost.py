"""Projected device-hours: measured cells count as measured, a job's other cells take their mean, and a
(model, strategy) that ran elsewhere is scaled by its fitted cost per image pass."""

import polars as pl
import pytest
import yaml

from ftbench import cli, cost

# the ground truth of the synthetic cells: start-up, seconds per training image, per-epoch checks per
# training image (BatchNorm recalibration: the CNN only) and per validation image (also the test pass)
FIXED, TRAIN = {"vit": 20.0, "cnn": 5.0}, {"vit": 0.01, "cnn": 0.002}
CHECK_TRAIN, CHECK_VAL = {"vit": 0.0, "cnn": 0.0005}, {"vit": 0.003, "cnn": 0.001}
SIZES = {("big", "full"): (800, 200, 250), ("small", "full"): (80, 20, 25), ("big", "k4"): (8, 200, 250)}
EPOCHS = {"full": 10, "k4": 4}


def _parts(model, task, group):
    """(train, check, total) seconds of a cell under the ground truth."""
    n_train, n_val, n_test = SIZES[(task, group)]
    train = EPOCHS[group] * TRAIN[model] * n_train
    check = EPOCHS[group] * (CHECK_TRAIN[model] * n_train + CHECK_VAL[model] * n_val)
    return train, check, FIXED[model] + train + check + CHECK_VAL[model] * n_test


def _seconds(model, task, group):
    return _parts(model, task, group)[2]


def _path(task, model, group, fold, rep=0):
    return f"{task}/{model}/lora/{group}/" + (f"fold{fold}" if group == "full" else f"r{rep}/fold{fold}")


def _cells(paths, device="NVIDIA A40", scale=1.0):
    """The cells table `aggregate` writes, with times that follow the cost model exactly (``scale``: the
    first cell of each job slower, to tell a job mean from a cell's own time)."""
    rows = []
    for path in paths:
        task, model, _, group, *rest = path.split("/")
        n_train, n_val, n_test = SIZES[(task, group)]
        slow = scale if rest[-1] == "fold0" and rest[0] in ("fold0", "r0") else 1.0
        train, check, total = _parts(model, task, group)
        rows.append({"cell": path, "task": task, "model": model, "strategy": "lora", "regime_group": group,
                     "status": "ok", "wall_seconds": total * slow, "train_seconds": train * slow,
                     "check_seconds": check * slow, "device_name": device, "n_train": n_train, "n_val": n_val,
                     "n_test": float(n_test), "epochs": EPOCHS[group]})
    return pl.DataFrame(rows)


GRID = [_path(t, m, "full", f) for t in ("big", "small") for m in ("vit", "cnn") for f in range(3)] + \
       [_path("big", m, "k4", f, r) for m in ("vit", "cnn") for r in range(2) for f in range(3)]


def test_each_cell_gets_its_measured_its_jobs_or_its_scaled_seconds():
    # ran: every cnn cell of both tasks, vit only fold 0 and 1 of the big task (full) and few-shot rep 0
    ran = [c for c in GRID if "/cnn/" in c] + [_path("big", "vit", "full", f) for f in (0, 1)] + \
          [_path("big", "vit", "k4", f) for f in range(3)]
    cells = _cells(ran, scale=1.5)
    projected = cost.project(GRID, cells).sort("cell")
    by_cell = dict(zip(projected["cell"], zip(projected["source"], projected["seconds"])))
    assert all(by_cell[c][0] == "measured" for c in ran)
    assert by_cell[_path("big", "vit", "full", 0)][1] == pytest.approx(1.5 * _seconds("vit", "big", "full"))
    # fold 2 of a job whose folds 0 and 1 ran: their mean
    assert by_cell[_path("big", "vit", "full", 2)] == ("job", pytest.approx(1.25 * _seconds("vit", "big", "full")))
    # repetition 1 of the few-shot job: the mean of repetition 0's cells
    assert by_cell[_path("big", "vit", "k4", 1, rep=1)][0] == "job"
    # the small task never ran with vit: scaled at the small task's sizes (known from the cnn cells)
    small = by_cell[_path("small", "vit", "full", 0)]
    assert small[0] == "scaled"
    assert _seconds("vit", "small", "full") < small[1] < _seconds("vit", "big", "full")
    assert projected["seconds"].null_count() == 0


def test_the_fit_recovers_an_exact_cost_model_and_scales_it_to_another_task():
    cnn_big = [c for c in GRID if "/cnn/" in c and c.startswith("big/")]  # full and few-shot: two sizes
    cells = _cells(cnn_big + [_path("small", "vit", "full", 0)])  # the vit cell tells the small task's sizes
    fitted = cost.fit_pairs(cells.with_columns(cost._kind())).filter(pl.col("model") == "cnn").row(0, named=True)
    assert fitted["fixed"] == pytest.approx(FIXED["cnn"], rel=1e-6)
    assert fitted["train_rate"] == pytest.approx(TRAIN["cnn"], rel=1e-6)
    assert fitted["check_rate_train"] == pytest.approx(CHECK_TRAIN["cnn"], rel=1e-6)
    assert fitted["check_rate_val"] == pytest.approx(CHECK_VAL["cnn"], rel=1e-6)
    small = cost.project([_path("small", "cnn", "full", 1)], cells)
    assert small["source"][0] == "scaled"
    assert small["seconds"][0] == pytest.approx(_seconds("cnn", "small", "full"), rel=1e-6)


def test_cells_nothing_can_estimate_are_left_without_seconds_and_counted():
    cells = _cells([c for c in GRID if "/cnn/" in c and c.startswith("small/")])
    projected = cost.project(GRID, cells)
    # vit never ran; cnn's few-shot cells have no measured size for (big, k4); cnn full on big has no size either
    assert projected.filter(pl.col("source").is_null()).height == len(GRID) - 3
    summary = cost.summarise(projected)
    assert summary["unestimated_cells"].sum() == len(GRID) - 3
    assert summary["done_hours"].sum() == pytest.approx(3 * _seconds("cnn", "small", "full") / 3600)


def test_cells_from_several_devices_need_a_choice(tmp_path, capsys):
    cells = pl.concat([_cells(GRID[:3], device="NVIDIA A40"), _cells(GRID[3:6], device="NVIDIA H100 80GB HBM3")])
    with pytest.raises(ValueError, match=r"2 devices \('NVIDIA A40' \(3 cells\), 'NVIDIA H100 80GB HBM3' \(3 cells\)\)"):
        cost.project(GRID, cells)
    cells.write_parquet(tmp_path / "cells.parquet")
    (tmp_path / "grid.txt").write_text("\n".join(GRID) + "\n")
    args = ["cost", "--cells", str(tmp_path / "cells.parquet"), "--grid", str(tmp_path / "grid.txt"),
            "--out", str(tmp_path / "cost.csv")]
    assert cli.main(args) == 1  # the error above, as a message
    assert cli.main(args + ["--device-name", "H100"]) == 0
    summary, per_cell = pl.read_csv(tmp_path / "cost.csv"), pl.read_csv(tmp_path / "cost_cells.csv")
    assert per_cell.height == len(GRID) and summary["measured_cells"].sum() == 3
    assert summary.filter(pl.col("model") == "cnn")["measured_cells"].item() == 3  # GRID[3:6]: the big task's cnn
    assert f"{len(GRID)} cells:" in capsys.readouterr().out


@pytest.mark.parametrize("pilot_task", [None, "second"])
def test_the_pilot_runs_each_pair_on_one_task_and_one_cheap_pair_on_the_others(tmp_path, pilot_task):
    from conftest import ROOT
    from smk import DEMO, planned, snakemake, write_config

    demo = yaml.safe_load(DEMO.read_text())
    config = {"datasets": {"second": demo["datasets"]["synthetic"]},
              "tasks": {"second": demo["tasks"]["synthetic_outcome"] | {"dataset": "second"}},
              "benchmark": {"tasks": ["synthetic_outcome", "second"]},
              "regimes": {"fewshot": {"k": [4, 8], "repetitions": 1}}, "cluster": {"pilot_task": pilot_task}}
    plan = planned(snakemake(ROOT, tmp_path, "--configfile", str(DEMO), str(write_config(tmp_path / "c.yaml", config)),
                             "-n", "pilot"))
    jobs = {path.removeprefix("results/cells/") for path in plan["train"]}
    pilot, other = ("synthetic_outcome", "second") if pilot_task is None else ("second", "synthetic_outcome")
    pairs = {f"{m}/{s}" for m in ("tiny_vit", "tiny_resnet") for s in demo["benchmark"]["strategies"]} - {"tiny_resnet/vpt"}
    # every pair at full data and the smallest K on the pilot task; the others: every group of one cached probe
    assert jobs == {f"{pilot}/{pair}/{group}" for pair in pairs for group in ("full", "k4")} | \
        {f"{other}/tiny_vit/lp/{group}" for group in ("full", "k4", "k8")}


def test_a_fitted_probe_without_epochs_is_scaled_by_its_start_up_alone():
    probe = [{"cell": f"small/vit/knn/full/fold{f}", "task": "small", "model": "vit", "strategy": "knn",
              "regime_group": "full", "status": "ok", "wall_seconds": 2.0 + f, "train_seconds": 0.0,
              "check_seconds": 0.0, "device_name": "NVIDIA A40", "n_train": 80, "n_val": 20, "n_test": 25.0,
              "epochs": 0} for f in range(3)]
    cells = pl.concat([_cells([_path("big", "cnn", "full", 0)]), pl.DataFrame(probe)], how="diagonal_relaxed")
    projected = cost.project(["big/vit/knn/full/fold0"], cells)  # the cnn cell tells the big task's sizes
    assert (projected["source"][0], projected["seconds"][0]) == ("scaled", pytest.approx(3.0))  # the mean start-up
