"""The embedding cache: a linear probe trained from cached features equals one trained through the backbone."""

import json

import numpy as np
import polars as pl
import pytest
from conftest import cell_settings

from ftbench.train import embeddings
from ftbench.train.cell import run_cell


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_cached_lp_gives_the_same_predictions(synthetic_data, tmp_path, arch):
    settings = cell_settings(arch, "lp", 1e-2, training={"max_epochs": 6, "augment": True}, regime={"name": "full"})
    cache = tmp_path / "emb.npy"
    info = embeddings.build(settings["model"], synthetic_data["store"], str(cache))
    feats = np.load(cache)
    assert feats.shape == (synthetic_data["table"].height, info["dim"]) and feats.dtype == np.float32

    end_to_end = run_cell(
        settings, synthetic_data["task_path"], synthetic_data["split"], synthetic_data["store"], str(tmp_path / "e2e")
    )
    cached = run_cell(
        settings,
        synthetic_data["task_path"],
        synthetic_data["split"],
        None,
        str(tmp_path / "cached"),
        embeddings=str(cache),
    )
    p1 = pl.read_parquet(tmp_path / "e2e" / "predictions.parquet")
    p2 = pl.read_parquet(tmp_path / "cached" / "predictions.parquet")
    assert p1["image_id"].to_list() == p2["image_id"].to_list()
    np.testing.assert_allclose(p1["prob"].to_numpy(), p2["prob"].to_numpy(), atol=1e-5)
    m1 = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert m1["mcc"] == pytest.approx(m2["mcc"]) and m1["threshold"] == pytest.approx(m2["threshold"], abs=1e-5)
    # both report the same model size; only the head trains
    assert (end_to_end["trainable_params"], end_to_end["total_params"]) == (
        cached["trainable_params"],
        cached["total_params"],
    )
    assert cached["trainable_params"] == 2 * info["dim"] + 2


@pytest.mark.parametrize(
    "kind, spec", [("lp_ft", {"lp_epochs": 3, "lp_lr": 1e-2}), ("gradual_unfreezing", {"unfreeze_every": 2})]
)
def test_frozen_phases_from_the_cache_equal_those_through_the_backbone(synthetic_data, tmp_path, kind, spec):
    """LP-FT's linear-probing phase and gradual unfreezing's head-only epochs train the head on cached features
    when the cell has the cache: the same cell as through the frozen backbone, up to the cache's tolerance."""
    settings = cell_settings(
        "test_resnet", kind, 1e-3, strategy=spec, training={"max_epochs": 5, "augment": True}, regime={"name": "full"}
    )
    cache = tmp_path / "emb.npy"
    embeddings.build(settings["model"], synthetic_data["store"], str(cache))
    runs = {
        name: run_cell(
            settings,
            synthetic_data["task_path"],
            synthetic_data["split"],
            synthetic_data["store"],
            str(tmp_path / name),
            embeddings=emb,
        )
        for name, emb in (("e2e", None), ("cached", str(cache)))
    }
    p1, p2 = (pl.read_parquet(tmp_path / name / "predictions.parquet") for name in runs)
    np.testing.assert_allclose(p1["prob"].to_numpy(), p2["prob"].to_numpy(), atol=1e-4)
    losses = [[e["val_loss"] for e in run["history"]["epochs"]] for run in runs.values()]
    np.testing.assert_allclose(*losses, atol=1e-5)
    assert runs["e2e"]["trainable_params"] == runs["cached"]["trainable_params"] == runs["cached"]["total_params"]
