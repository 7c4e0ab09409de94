"""Fitted probes on cached features: each learns a separable task, the hyper-parameter is chosen on
validation, and a cell fitted from the embedding cache writes the same outputs as a trained one."""

import json

import numpy as np
import pytest
from conftest import cell_settings
from sklearn.metrics import matthews_corrcoef

from ftbench.plan import grid
from ftbench.train import embeddings, probes
from ftbench.train.cell import run_cell


def _features(n: int, rng: np.random.Generator, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes 5 SD apart along one direction (nearly separable), 1 in 4 positive."""
    y = (rng.random(n) < 0.25).astype(np.int64)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += 5.0 * y
    return x, y


@pytest.mark.parametrize("kind, spec", [("logreg", {"C": 1.0}), ("knn", {"k": 5})])
def test_each_probe_learns_a_separable_task(kind, spec):
    rng = np.random.default_rng(0)
    (x, y), (tx, ty) = _features(200, rng), _features(400, rng)
    probe = probes.PROBES[kind](spec, len(y), 0).fit(x, y)
    assert matthews_corrcoef(ty, probe.predict_proba(tx)[:, 1] >= 0.5) >= 0.8
    assert probes.parameters(probe) == (33 if kind == "logreg" else 0)  # 32 weights and a bias; kNN learns none


def test_knn_takes_at_most_the_training_size_as_neighbours():
    assert probes.knn({"k": 10}, n_train=2, seed=0)[-1].n_neighbors == 2  # a 1-shot cell still gets a probe


def test_probe_settings_hold_the_seed_only(demo_config):
    config = {
        **demo_config,
        "strategies": {**demo_config["strategies"], "probe": {"kind": "logreg"}},
        "benchmark": {**demo_config["benchmark"], "strategies": ["lp", "probe"]},
    }
    cell = next(c for c in grid.cells(config) if c.strategy == "probe")
    settings = grid.cell_settings(config, cell)
    assert settings["training"] == {"seed": config["training"]["seed"]}  # lr changes rerun nothing
    assert [c["strategy"]["C"] for c in settings["candidates"]] == [1e-3, 1e-2, 0.1, 1.0]  # chosen on validation
    assert grid.uses_cache(config, "probe", cell.model)
    assert grid.uses_cache(
        {**config, "training": {**config["training"], "embedding_cache": False}}, "probe", cell.model
    )


@pytest.mark.parametrize("kind", sorted(probes.PROBES))
def test_a_probe_cell_fitted_from_the_cache_writes_a_complete_cell(synthetic_data, tmp_path, kind):
    settings = cell_settings("test_resnet", kind, 1e-2, regime={"name": "full"})
    cache = tmp_path / "emb.npy"
    info = embeddings.build(settings["model"], synthetic_data["store"], str(cache))
    run = run_cell(
        settings,
        synthetic_data["task_path"],
        synthetic_data["split"],
        None,
        str(tmp_path / "cell"),
        embeddings=str(cache),
    )
    metrics = json.loads((tmp_path / "cell" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and -1 <= metrics["mcc"] <= 1 and 0 <= metrics["threshold"] <= 1
    losses = [c["val_loss"] for c in run["candidates"]]  # every candidate's loss, the (first) lowest chosen
    assert len(losses) == 4 and [c["chosen"] for c in run["candidates"]].index(True) == losses.index(min(losses))
    assert run["trainable_params"] == (info["dim"] + 1 if kind == "logreg" else 0)
    assert run["total_params"] > run["trainable_params"] and run["gflops"] > 0
    with pytest.raises(ValueError, match="fitted on the embedding cache"):
        run_cell(
            settings,
            synthetic_data["task_path"],
            synthetic_data["split"],
            synthetic_data["store"],
            str(tmp_path / "e2e"),
        )
