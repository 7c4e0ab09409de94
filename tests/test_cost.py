"""Projected device-hours: measured cells count as measured, a job's other cells take their mean, and a
(model, strategy) that ran elsewhere is scaled by its fitted cost per image pass."""

import polars as pl
import pytest
import yaml

from ftbench import cli
from ftbench.analysis import cost

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
        rows.append(
            {
                "cell": path,
                "task": task,
                "model": model,
                "strategy": "lora",
                "regime_group": group,
                "status": "ok",
                "wall_seconds": total * slow,
                "train_seconds": train * slow,
                "check_seconds": check * slow,
                "device_name": device,
                "n_train": n_train,
                "n_val": n_val,
                "n_test": float(n_test),
                "epochs": EPOCHS[group],
            }
        )
    return pl.DataFrame(rows)


GRID = [_path(t, m, "full", f) for t in ("big", "small") for m in ("vit", "cnn") for f in range(3)] + [
    _path("big", m, "k4", f, r) for m in ("vit", "cnn") for r in range(2) for f in range(3)
]


def test_each_cell_gets_its_measured_its_jobs_or_its_scaled_seconds():
    # ran: every cnn cell of both tasks, vit only fold 0 and 1 of the big task (full) and few-shot rep 0
    ran = (
        [c for c in GRID if "/cnn/" in c]
        + [_path("big", "vit", "full", f) for f in (0, 1)]
        + [_path("big", "vit", "k4", f) for f in range(3)]
    )
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
    with pytest.raises(
        ValueError, match=r"2 devices \('NVIDIA A40' \(3 cells\), 'NVIDIA H100 80GB HBM3' \(3 cells\)\)"
    ):
        cost.project(GRID, cells)
    cells.write_parquet(tmp_path / "cells.parquet")
    (tmp_path / "grid.txt").write_text("\n".join(GRID) + "\n")
    args = [
        "cost",
        "--cells",
        str(tmp_path / "cells.parquet"),
        "--grid",
        str(tmp_path / "grid.txt"),
        "--out",
        str(tmp_path / "cost.csv"),
    ]
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
    config = {
        "datasets": {"second": demo["datasets"]["synthetic"]},
        "tasks": {"second": demo["tasks"]["synthetic_outcome"] | {"dataset": "second"}},
        "benchmark": {"tasks": ["synthetic_outcome", "second"]},
        "regimes": {"fewshot": {"k": [4, 8], "repetitions": 1}},
        "cluster": {"pilot_task": pilot_task},
    }
    plan = planned(
        snakemake(
            ROOT, tmp_path, "--configfile", str(DEMO), str(write_config(tmp_path / "c.yaml", config)), "-n", "pilot"
        )
    )
    jobs = {path.removeprefix("results/cells/") for path in plan["train"]}
    pilot, other = ("synthetic_outcome", "second") if pilot_task is None else ("second", "synthetic_outcome")
    pairs = {f"{m}/{s}" for m in ("tiny_vit", "tiny_resnet") for s in demo["benchmark"]["strategies"]} - {
        "tiny_resnet/vpt"
    }
    # every pair at full data and the smallest K on the pilot task; the others: every group of one cached probe
    assert jobs == {f"{pilot}/{pair}/{group}" for pair in pairs for group in ("full", "k4")} | {
        f"{other}/tiny_vit/lp/{group}" for group in ("full", "k4", "k8")
    }


def test_a_fitted_probe_without_epochs_is_scaled_by_its_start_up_alone():
    probe = [
        {
            "cell": f"small/vit/knn/full/fold{f}",
            "task": "small",
            "model": "vit",
            "strategy": "knn",
            "regime_group": "full",
            "status": "ok",
            "wall_seconds": 2.0 + f,
            "train_seconds": 0.0,
            "check_seconds": 0.0,
            "device_name": "NVIDIA A40",
            "n_train": 80,
            "n_val": 20,
            "n_test": 25.0,
            "epochs": 0,
        }
        for f in range(3)
    ]
    cells = pl.concat([_cells([_path("big", "cnn", "full", 0)]), pl.DataFrame(probe)], how="diagonal_relaxed")
    projected = cost.project(["big/vit/knn/full/fold0"], cells)  # the cnn cell tells the big task's sizes
    assert (projected["source"][0], projected["seconds"][0]) == ("scaled", pytest.approx(3.0))  # the mean start-up


# ---- the FLOP model (ftbench.plan.flop_cost): a figure without a pilot ------------------------------------------


def _flop_config(demo_config, **cost_settings) -> dict:
    """The demo config projected onto an A40, its task's sizes declared (80 patients, 160 images)."""
    import copy

    config = copy.deepcopy(demo_config)
    config["cost"] = {"device": "a40", "tasks": {"synthetic_outcome": {"patients": 80, "images": 160}}} | cost_settings
    return config


def test_every_trained_strategy_kind_has_a_backward_cost():
    from ftbench.models import strategy_kinds
    from ftbench.plan import flop_cost

    trained = {name for name, kind in strategy_kinds.KINDS.items() if kind.mode != "fitted"}
    assert trained <= set(flop_cost.BACKWARD), trained - set(flop_cost.BACKWARD)


@pytest.mark.parametrize(
    "kind, spec, epochs, recalibrated, backward",
    [
        ("fft", {}, 4, 4, 2.0 * 4),
        ("lora", {}, 4, 4, 1.0 * 4),
        ("lp", {}, 4, 0, 0.0),  # frozen: no backward pass through the backbone, its statistics kept
        ("lp_ft", {"lp_epochs": 2}, 4, 2, 2.0 * 2),  # two epochs of probing, then two of everything
        ("gradual_unfreezing", {"unfreeze_every": 1}, 4, 3, 2.0 * (0 + 1 + 2 + 3) / 5),  # 5 blocks, one more each epoch
    ],
)
def test_image_passes_follow_the_training_loop(kind, spec, epochs, recalibrated, backward):
    from ftbench.plan import flop_cost

    ratio = flop_cost.BACKWARD[kind]
    forward, back = flop_cost.passes(100, 20, 30, epochs, lambda e: ratio(spec, 5, e), batchnorm=True)
    assert forward == epochs * (100 + 20) + recalibrated * 100 + 30  # the best epoch's validation probabilities kept
    assert back == pytest.approx(100 * backward)
    # without BatchNorms no recalibration; a fractional mean of epochs weighs the last one
    assert flop_cost.passes(100, 20, 30, 2.5, lambda e: 2.0, batchnorm=False) == (2.5 * 120 + 30, 2.5 * 200)
    if kind in ("lp_ft", "gradual_unfreezing"):  # with the cache, the frozen epochs run no backbone pass
        frozen = sum(1 for e in range(epochs) if ratio(spec, 5, e) == 0)
        cached, _ = flop_cost.passes(
            100, 20, 30, epochs, lambda e: ratio(spec, 5, e), batchnorm=True, frozen_cached=True
        )
        assert frozen and cached == forward - frozen * (100 + 20)


@pytest.mark.parametrize(
    "kind, strategy",
    [
        ("fft", {}),
        ("lora", {"rank": 4}),
        ("lp", {}),
        ("lp_ft", {"lp_epochs": 2}),
        ("gradual_unfreezing", {"unfreeze_every": 1}),
    ],
)
def test_forward_passes_are_those_a_real_cell_runs(synthetic_data, tmp_path, monkeypatch, kind, strategy):
    """Every image the backbone sees in a real cell (training steps, BatchNorm recalibration, validation, final
    predictions) is one the FLOP model counts: a change to the loop that it does not follow fails here."""
    import json

    from conftest import cell_settings

    from ftbench.models import backbones
    from ftbench.models import strategy_kinds as kinds
    from ftbench.models.zoo import resolve
    from ftbench.plan import flop_cost
    from ftbench.train.cell import run_cell

    seen = []
    features = backbones.Classifier.features
    monkeypatch.setattr(
        backbones.Classifier,
        "features",
        lambda self, x: seen.append(0 if x.device.type == "meta" else len(x)) or features(self, x),
    )
    settings = cell_settings(
        "test_resnet", kind, 1e-3, strategy=strategy, training={"max_epochs": 4, "patience": 10, "batch_size": 16}
    )
    run_cell(settings, synthetic_data["task_path"], synthetic_data["split"], synthetic_data["store"], str(tmp_path))
    run = json.loads((tmp_path / "run.json").read_text())
    n_test = len(pl.read_parquet(tmp_path / "predictions.parquet"))
    config = {"models": {"m": {"arch": "test_resnet", "img_size": 48}}}
    cost_of = flop_cost.model_cost(config, "m")
    entry = resolve("test_resnet", 48)
    spec = kinds.resolve(settings["strategy"], entry, settings["training"])[0]
    forward, _ = flop_cost.passes(
        run["n_train"],
        run["n_val"],
        n_test,
        run["epochs"],
        lambda e: flop_cost.BACKWARD[kind](spec, cost_of.blocks, e),
        cost_of.batchnorm,
    )
    assert run["epochs"] == 4 and cost_of.batchnorm
    assert sum(seen) == forward


def test_without_a_pilot_every_cell_is_projected_from_flops(demo_config, tmp_path):
    from ftbench.plan import flop_cost

    config = _flop_config(demo_config)
    estimate = flop_cost.estimate(
        config,
        pl.DataFrame(
            schema={
                "model": pl.String,
                "strategy": pl.String,
                "regime": pl.String,
                "status": pl.String,
                "epochs": pl.Int64,
            }
        ),
        tmp_path,
    )
    cells = {row["cell"]: row for row in estimate.cells.iter_rows(named=True)}
    assert estimate.sizes_from == {"synthetic_outcome": "declared"}
    # declared: 80 patients, 2 images each; a fold tests 1/5, validates 0.2 of the rest, trains on the others
    fft = cells["synthetic_outcome/tiny_vit/fft/full/fold0"]
    assert (fft["n_train"], fft["n_val"], fft["n_test"]) == pytest.approx((102.4, 25.6, 32.0))
    assert fft["epochs"] == 12 and fft["candidates"] == 1  # the demo's max_epochs
    assert fft["passes"] == pytest.approx(12 * (102.4 * 3 + 25.6) + 32)  # a ViT: no BatchNorm
    assert fft["flop_seconds"] == pytest.approx(fft["passes"] * fft["gflops"] * 1e9 / (149.7e12 * 0.2))
    fewshot = cells["synthetic_outcome/tiny_vit/fft/k4/r0/fold0"]
    assert (fewshot["n_train"], fewshot["n_val"]) == pytest.approx((16.0, 16.0))  # 4 per class, trained and validated
    # a probe on the embedding cache costs nothing; the cache, one forward pass per image and model
    assert cells["synthetic_outcome/tiny_vit/lp/full/fold0"]["passes"] == 0
    assert sorted(estimate.embeddings["model"]) == ["tiny_resnet", "tiny_vit"]
    assert estimate.embeddings["images"].to_list() == [160.0, 160.0]


def test_candidates_multiply_and_a_pilot_gives_the_epochs(demo_config, tmp_path):
    from ftbench.plan import flop_cost

    config = _flop_config(demo_config, early_stopping="0.1", mfu="0.4", startup="1.5")  # as `--config` passes them
    pilot = pl.DataFrame(
        {
            "model": ["tiny_vit"] * 2,
            "strategy": ["fft"] * 2,
            "regime": ["full", "full"],
            "status": ["ok", "ok"],
            "epochs": [4, 6],
        }
    )
    one = {r["cell"]: r for r in flop_cost.estimate(config, pilot, tmp_path).cells.iter_rows(named=True)}
    config["strategies"]["fft"]["lr"] = [1e-3, 1e-4]
    two = {r["cell"]: r for r in flop_cost.estimate(config, pilot, tmp_path).cells.iter_rows(named=True)}
    full, fewshot = "synthetic_outcome/tiny_vit/fft/full/fold0", "synthetic_outcome/tiny_vit/fft/k4/r0/fold0"
    assert (one[full]["epochs"], one[full]["epochs_from"]) == (5.0, "pilot")  # the pair's mean at full data
    assert (one[fewshot]["epochs"], one[fewshot]["epochs_from"]) == (5.0, "settings")  # patience 4 + 1 > 12 x 0.1
    assert two[full]["candidates"] == 2 and two[full]["passes"] == pytest.approx(2 * one[full]["passes"])
    assert one[full]["flop_seconds"] == pytest.approx(one[full]["flops"] / (149.7e12 * 0.4) + 1.5)
    assert one["synthetic_outcome/tiny_vit/lp/full/fold0"]["flop_seconds"] == 1.5  # a cached cell: start-up alone


def test_sizes_are_counted_from_the_data_stage_when_it_ran(demo_config, tmp_path):
    from conftest import make_task_table

    from ftbench import splits
    from ftbench.plan import flop_cost

    config = _flop_config(demo_config)
    table = make_task_table(40, images=3)  # 1, 2 or 3 images per patient
    files = {
        "table": tmp_path / "tasks/synthetic_outcome/images.parquet",
        "split": tmp_path / "splits/synthetic_outcome/folds.parquet",
        "k4": tmp_path / "splits/synthetic_outcome/fewshot/k4.parquet",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(files["table"])
    split = splits.kfold(table, 5, 0.2, 0)
    split.write_parquet(files["split"])
    sizes, source = flop_cost.task_sizes(config, "synthetic_outcome", tmp_path)
    assert source == "declared"  # the few-shot draws are missing: the declared sizes stand
    splits.fewshot_draws(table, split, 4, 1, 0).write_parquet(files["k4"])
    assert sorted(flop_cost.data_inputs(config, "synthetic_outcome", str(tmp_path))) == sorted(map(str, files.values()))
    sizes, source = flop_cost.task_sizes(config, "synthetic_outcome", tmp_path)
    images = table.group_by("patient_id").len("images")
    fold0 = split.filter(pl.col("fold") == 0).join(images, on="patient_id")
    count = {part: fold0.filter(pl.col("part") == part)["images"].sum() for part in ("train", "val", "test")}
    draw = (
        pl.read_parquet(files["k4"])
        .filter((pl.col("fold") == 0) & (pl.col("repetition") == 0))
        .join(images, on="patient_id")
    )
    drawn = {part: draw.filter(pl.col("part") == part)["images"].sum() for part in ("train", "val")}
    assert source == "data"
    assert sizes[("full", 0)] == (count["train"], count["val"], count["test"])
    assert sizes[("k4r0", 0)] == (drawn["train"], drawn["val"], count["test"])  # validated on K per class too
    del config["cost"]["tasks"]["synthetic_outcome"]
    with pytest.raises(ValueError, match=r"config key 'cost.tasks.synthetic_outcome' declares none"):
        flop_cost.task_sizes(config, "synthetic_outcome", tmp_path / "elsewhere")


def test_flops_fill_in_what_nothing_measured_and_concurrent_cells_share_the_device():
    paper = pl.DataFrame({"cell": GRID, "flop_seconds": [7.0] * len(GRID)})
    ran = [c for c in GRID if "/cnn/" in c and c.startswith("small/")]
    projected = cost.project(GRID, _cells(ran), paper=paper)
    sources = dict(zip(projected["cell"], projected["source"]))
    assert {sources[c] for c in ran} == {"measured"}
    assert {s for c, s in sources.items() if c not in ran} == {"flops"}  # nothing measured tells their sizes
    assert projected.filter(pl.col("source") == "flops")["seconds"].to_list() == [7.0] * (len(GRID) - 3)
    one, four = cost.summarise(projected), cost.summarise(projected, concurrent_cells=4)
    # measured wall time is shared by the cells running at once; FLOP seconds are device time already
    assert four["done_hours"].sum() == pytest.approx(one["done_hours"].sum() / 4)
    assert four["remaining_hours"].sum() == pytest.approx(one["remaining_hours"].sum())


def test_the_cost_command_projects_onto_the_named_gpu(demo_config, tmp_path, capsys):
    import json

    from ftbench.plan import grid

    config = _flop_config(demo_config)
    paths = [c.path for c in grid.cells(config)]
    (tmp_path / "grid.txt").write_text("\n".join(paths) + "\n")
    vit, resnet = "synthetic_outcome/tiny_vit/fft/full/fold0", "synthetic_outcome/tiny_resnet/bitfit/full/fold0"

    def ran(cell: str, device: str) -> pl.DataFrame:
        task, model, strategy, *_ = cell.split("/")
        return _cells([_path("big", "cnn", "full", 0)], device=device).with_columns(
            pl.lit(cell).alias("cell"),
            pl.lit(task).alias("task"),
            pl.lit(model).alias("model"),
            pl.lit(strategy).alias("strategy"),
            pl.lit("full").alias("regime"),
        )

    pl.concat([ran(vit, "NVIDIA A40"), ran(resnet, "cpu")]).write_parquet(tmp_path / "cells.parquet")
    args = [
        "cost",
        "--cells",
        str(tmp_path / "cells.parquet"),
        "--grid",
        str(tmp_path / "grid.txt"),
        "--results",
        str(tmp_path),
        "--out",
        str(tmp_path / "cost.csv"),
        "--config",
        json.dumps(config),
    ]
    assert cli.main(args) == 0
    source = dict(pl.read_csv(tmp_path / "cost_cells.csv").select("cell", "source").iter_rows())
    # the A40 cell counts, and stands for its job's other folds; the CPU one says nothing of an A40
    assert source[vit] == "measured" and source[vit.replace("fold0", "fold1")] == "job"
    assert source[resnet] == "flops" and source[resnet.replace("fold0", "fold1")] == "flops"
    assert sum(s == "measured" for s in source.values()) == 1
    assert "FLOP model: a40 (bf16, 149.7 TFLOPS dense) x MFU 0.2" in capsys.readouterr().out
    assert "(embedding cache)" in pl.read_csv(tmp_path / "cost.csv")["strategy"].to_list()


def test_cost_settings_from_the_command_line_are_validated(raw_config):
    from ftbench.plan.config import ConfigError, validate

    raw_config["cost"] = {"device": "a40", "mfu": "0.35", "early_stopping": "0.5"}  # what --config makes of numbers
    from ftbench.plan import flop_cost

    assert flop_cost.rate(validate(raw_config)) == pytest.approx(149.7e12 * 0.35)
    for key, bad in (("mfu", "1.5"), ("device", "v100"), ("early_stopping", "0")):
        raw_config["cost"] = {"device": "a40", key: bad}
        with pytest.raises(ConfigError, match=rf"config key 'cost.{key}'"):
            validate(raw_config)


def test_snakemake_cost_makes_the_data_stage_of_undeclared_tasks_only(tmp_path):
    from conftest import ROOT
    from smk import DEMO, planned, snakemake

    plan = planned(
        snakemake(ROOT, tmp_path, "--configfile", str(DEMO), "--config", "cost={device: h100}", "-n", "cost")
    )
    assert {"task_table", "folds", "fewshot"} <= set(plan) and "train" not in plan and "image_store" not in plan
    declared = "cost={device: h100, tasks: {synthetic_outcome: {patients: 80, images: 160}}}"
    plan = planned(snakemake(ROOT, tmp_path, "--configfile", str(DEMO), "--config", declared, "-n", "cost"))
    assert set(plan) == {"grid_list", "aggregate_partial", "cost"}
