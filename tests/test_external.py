"""External validation (regimes.transfer): what planning declares, and that a kept model is the trained one.

The round trips score a source cell's kept model on the source's own test patients as the "target": the transfer
job must reproduce the cell's test predictions exactly (the same model, reloaded) and its metrics at the cell's
threshold, whatever the target's labels say.
"""

import copy
import json
from pathlib import Path

import polars as pl
import pytest
from conftest import cell_settings

from ftbench.plan import grid, transfer
from ftbench.plan.config import ConfigError, validate

SOURCE = "synthetic_outcome"
TARGET = "synthetic_external"


def _settings_by_job(config: dict) -> dict[str, dict]:
    jobs = grid.jobs(config)
    return {job.path: grid.job_settings(config, job, cells) for job, cells in jobs.items()}


def test_only_the_sources_full_data_cells_keep_their_model(demo_config):
    settings = _settings_by_job(demo_config)
    kept = {path for path, s in settings.items() if s.get("keep_model")}
    assert kept == {path for path in settings if path.startswith(f"{SOURCE}/") and path.endswith("/full")}
    assert kept  # the demo declares its task a source
    cell = grid.cells(demo_config)[0]
    assert grid.cell_settings(demo_config, cell).get("keep_model") == (cell.regime == "full")


def test_one_transfer_job_per_model_scores_every_full_data_job_of_the_source_and_its_folds(demo_config):
    grid_jobs = grid.jobs(demo_config)
    jobs = transfer.jobs(demo_config, grid_jobs)
    full = [job for job in grid_jobs if job.task == SOURCE and job.group == "full"]
    assert {job.model for job in jobs} == set(demo_config["benchmark"]["models"])
    assert sorted(s.path for sources in jobs.values() for s in sources) == sorted(j.path for j in full)
    folds = grid.fold_count(demo_config, SOURCE)
    paths = transfer.cell_paths(jobs, grid_jobs)
    assert len(paths) == len(full) * folds and len(set(paths)) == len(paths)
    for job, sources in jobs.items():
        assert job.path == f"{SOURCE}@{TARGET}/{job.model}"
        assert {f"{job.path}/{s.strategy}/full/fold{f}" for s in sources for f in range(folds)} <= set(paths)
        inputs = transfer.job_inputs(demo_config, job, sources)
        assert inputs["cells"] == [f"results/cells/{SOURCE}/{job.model}/{s.strategy}/full" for s in sources]
        assert inputs["table"] == f"results/tasks/{TARGET}/images.parquet"
        # the target's own data: never the source's; the cache for the heads on cached features (lp), the images
        # (and weights, where the model has any) for the others
        assert inputs["embeddings"] == f"results/embeddings/{TARGET}/{job.model}.npy"
        assert inputs["store"] == f"results/data/{TARGET}/images_64.npy"
        reads = transfer.job_settings(demo_config, job, sources)["strategies"]
        assert reads["lp"] == "embeddings" and reads["fft"] == "images"


def test_adding_a_target_changes_no_training_job_and_a_new_source_only_its_full_data_jobs(demo_config):
    config = copy.deepcopy(demo_config)
    config["tasks"]["other"] = dict(config["tasks"][TARGET], cohort="elsewhere")
    before = _settings_by_job(config)
    config["regimes"]["transfer"][SOURCE] = [TARGET, "other"]
    assert _settings_by_job(config) == before
    assert len(transfer.pairs(config)) == 2
    config["regimes"]["transfer"] = None
    after = _settings_by_job(config)
    changed = {path for path in before if before[path] != after[path]}
    assert changed == {path for path in before if path.startswith(f"{SOURCE}/") and path.endswith("/full")}


def test_a_source_outside_the_benchmark_leaves_its_pairs_out_and_says_so(demo_config):
    config = copy.deepcopy(demo_config)
    config["regimes"]["transfer"] = {TARGET: [SOURCE]}  # declared, but synthetic_external is not trained by the grid
    config["tasks"][SOURCE]["cohort"] = "first"
    assert transfer.pairs(config) == []
    assert transfer.left_out(config) == [
        f"external validation {TARGET} -> {SOURCE}: its source is not a task of the benchmark (benchmark.tasks)"
    ]
    assert not any(s.get("keep_model") for s in _settings_by_job(config).values())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"transfer": {SOURCE: [SOURCE]}}, "of the source's own cohort 'synthetic'"),
        ({"transfer": {SOURCE: ["nowhere"]}}, "unknown target task 'nowhere'"),
        ({"transfer": {"nobody": [TARGET]}}, "unknown source task 'nobody'"),
        ({"full": False}, "regimes.full is false"),
    ],
)
def test_a_wrong_transfer_declaration_names_the_key(raw_config, change, message):
    raw_config["regimes"] |= change
    with pytest.raises(ConfigError, match="regimes.transfer") as err:
        validate(raw_config)
    assert message in str(err.value)


def test_a_target_of_the_same_cohort_through_its_cohort_key_is_refused(raw_config):
    raw_config["tasks"][TARGET]["cohort"] = "synthetic"  # declared one group of patients with the source
    with pytest.raises(ConfigError, match="not an external validation"):
        validate(raw_config)


# --- round trips: a kept model scored again -----------------------------------------------------------------


def _source_cell(data: dict, tmp_path: Path, settings: dict, embeddings: str | None = None) -> Path:
    """A source job folder (``<source>/<model>/<strategy>/full``) holding fold 0, trained to keep its model."""
    from ftbench.train.cell import run_cell

    job = tmp_path / "source" / settings["model"]["name"] / settings["strategy"]["name"] / "full"
    run_cell(
        settings | {"keep_model": True},
        data["task_path"],
        data["split"],
        None if embeddings else data["store"],
        str(job / "fold0"),
        embeddings=embeddings,
    )
    return job


def _own_test_patients(data: dict, tmp_path: Path, flip: bool = False) -> str:
    """The source's fold-0 test images as a target task table (labels flipped on request)."""
    split = pl.read_parquet(data["split"]).filter((pl.col("fold") == 0) & (pl.col("part") == "test"))
    table = pl.read_parquet(data["task_path"]).filter(pl.col("patient_id").is_in(split["patient_id"].implode()))
    if flip:
        table = table.with_columns((1 - pl.col("label")).cast(table["label"].dtype).alias("label"))
    path = tmp_path / ("flipped.parquet" if flip else "target.parquet")
    table.write_parquet(path)
    return str(path)


def _transfer(data, tmp_path, job, embeddings=None, flip=False) -> tuple[dict, pl.DataFrame]:
    from ftbench.train.transfer import run_transfer

    out, strategy = tmp_path / ("flipped" if flip else "out"), job.parent.name
    reads = {strategy: "embeddings" if embeddings else "images"}
    run_transfer(
        {"version": 1, "source": "syn", "target": "own", "strategies": reads},
        [str(job)],
        _own_test_patients(data, tmp_path, flip),
        str(out),
        store=None if embeddings else data["store"],
        embeddings=embeddings,
    )
    fold = out / strategy / "full" / "fold0"
    return json.loads((fold / "metrics.json").read_text()), pl.read_parquet(fold / "predictions.parquet")


def _same_as_the_cell(job: Path, metrics: dict, preds: pl.DataFrame) -> None:
    cell = json.loads((job / "fold0" / "metrics.json").read_text())
    mine = pl.read_parquet(job / "fold0" / "predictions.parquet").sort("image_id")
    assert metrics["status"] == "ok", metrics.get("error")
    assert metrics["task"] == "syn@own" and metrics["fold"] == 0
    assert preds.sort("image_id")["prob"].to_list() == pytest.approx(mine["prob"].to_list(), abs=1e-6)
    assert metrics["threshold"] == cell["threshold"]
    for key in ("mcc", "pr_auc", "roc_auc", "n_test_patients"):
        assert metrics[key] == pytest.approx(cell[key], abs=1e-9), key


@pytest.fixture(scope="module")
def cache(synthetic_data, tmp_path_factory) -> dict[str, str]:
    """Embedding caches of the synthetic store, per architecture (what cached and fitted strategies read)."""
    from ftbench.train import embeddings

    out = {}
    for arch in ("test_vit",):
        path = tmp_path_factory.mktemp("cache") / f"{arch}.npy"
        embeddings.build({"name": arch, "arch": arch, "img_size": 48}, synthetic_data["store"], str(path))
        out[arch] = str(path)
    return out


@pytest.mark.parametrize(
    "arch, kind, lr, strategy",
    [
        ("test_resnet", "fft", 3e-3, {}),  # every parameter and the BatchNorm statistics
        ("test_vit", "lora", 3e-3, {"rank": 4}),  # peft's adapters on a frozen backbone
        ("test_resnet", "bitfit", 3e-3, {"lr": [3e-3, 1e-2]}),  # two candidates: the chosen one kept, the other not
    ],
)
def test_a_kept_model_scores_the_sources_test_patients_as_the_cell_did(
    synthetic_data, tmp_path, arch, kind, lr, strategy
):
    settings = cell_settings(arch, kind, lr, training={"max_epochs": 3}, strategy=strategy)
    job = _source_cell(synthetic_data, tmp_path, settings)
    assert sorted(p.name for p in (job / "fold0").glob("model*")) == ["model.pt"]
    _same_as_the_cell(job, *_transfer(synthetic_data, tmp_path, job))


@pytest.mark.parametrize("kind, strategy", [("lp", {}), ("logreg", {"C": 1.0})])
def test_a_head_or_probe_on_cached_features_is_kept_and_scored_on_the_targets_cache(
    synthetic_data, cache, tmp_path, kind, strategy
):
    settings = cell_settings("test_vit", kind, 1e-2, training={"max_epochs": 3}, strategy=strategy)
    job = _source_cell(synthetic_data, tmp_path, settings, embeddings=cache["test_vit"])
    assert (job / "fold0" / ("probe.pkl" if kind == "logreg" else "model.pt")).is_file()
    _same_as_the_cell(job, *_transfer(synthetic_data, tmp_path, job, embeddings=cache["test_vit"]))


def test_the_targets_labels_change_its_score_but_not_the_model_or_its_threshold(synthetic_data, tmp_path):
    settings = cell_settings("test_resnet", "bitfit", 1e-2, training={"max_epochs": 3})
    job = _source_cell(synthetic_data, tmp_path, settings)
    metrics, preds = _transfer(synthetic_data, tmp_path, job)
    flipped, flipped_preds = _transfer(synthetic_data, tmp_path, job, flip=True)
    assert flipped_preds["prob"].to_list() == preds["prob"].to_list()
    assert flipped["threshold"] == metrics["threshold"]
    assert flipped["roc_auc"] == pytest.approx(1 - metrics["roc_auc"])


def test_a_source_cell_without_a_kept_model_is_a_failed_fold_that_says_how_to_rerun(synthetic_data, tmp_path):
    from ftbench.train.cell import run_cell

    job = tmp_path / "source" / "test_resnet" / "bitfit" / "full"
    settings = cell_settings("test_resnet", "bitfit", 1e-2, training={"max_epochs": 2})
    run_cell(
        settings, synthetic_data["task_path"], synthetic_data["split"], synthetic_data["store"], str(job / "fold0")
    )
    metrics, preds = _transfer(synthetic_data, tmp_path, job)
    assert metrics["status"] == "failed"
    assert "kept no model" in metrics["error"] and "--forcerun" in metrics["error"]
    assert preds["prob"].is_nan().all()


def test_a_kept_state_holds_the_trained_parameters_and_saved_buffers_only(tmp_path):
    """Frozen weights are rebuilt from the pretrained ones, and a non-persistent buffer (transformers' position ids)
    with the model: neither is kept, so loading the state into a freshly built model never meets unknown keys."""
    import torch

    from ftbench.models.strategies import Plan
    from ftbench.train.transfer import keep_trained

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[0].register_buffer("position_ids", torch.arange(4), persistent=False)
    keep_trained(model, Plan([{"params": list(model[2].parameters())}]), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"2.weight", "2.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    assert set(state) <= set(fresh.state_dict())
