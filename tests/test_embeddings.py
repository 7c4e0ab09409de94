"""The embedding cache: a linear probe trained from cached features equals one trained through the backbone."""

import json

import numpy as np
import polars as pl
import pytest
from conftest import cell_settings

from ftbench import embeddings
from ftbench.cell import run_cell


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_cached_lp_gives_the_same_predictions(synthetic_data, tmp_path, arch):
    settings = cell_settings(arch, "lp", 1e-2, training={"max_epochs": 6, "augment": True},
                             regime={"name": "full"})
    cache = tmp_path / "emb.npy"
    info = embeddings.build(settings["model"], synthetic_data["store"], str(cache))
    feats = np.load(cache)
    assert feats.shape == (synthetic_data["table"].height, info["dim"]) and feats.dtype == np.float32

    end_to_end = run_cell(settings, synthetic_data["task_path"], synthetic_data["split"], synthetic_data["store"],
                          str(tmp_path / "e2e"))
    cached = run_cell(settings, synthetic_data["task_path"], synthetic_data["split"], None, str(tmp_path / "cached"),
                      embeddings=str(cache))
    p1 = pl.read_parquet(tmp_path / "e2e" / "predictions.parquet")
    p2 = pl.read_parquet(tmp_path / "cached" / "predictions.parquet")
    assert p1["image_id"].to_list() == p2["image_id"].to_list()
    np.testing.assert_allclose(p1["prob"].to_numpy(), p2["prob"].to_numpy(), atol=1e-5)
    m1 = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert m1["mcc"] == pytest.approx(m2["mcc"]) and m1["threshold"] == pytest.approx(m2["threshold"], abs=1e-5)
    # both report the same model size; only the head trains
    assert (end_to_end["trainable_params"], end_to_end["total_params"]) == (cached["trainable_params"], cached["total_params"])
    assert cached["trainable_params"] == 2 * info["dim"] + 2
