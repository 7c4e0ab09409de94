"""A diverging configuration fails its cells, visibly, and the rest of the grid still finishes."""

import polars as pl
import pytest
from conftest import ROOT
from smk import DEMO, snakemake, write_config

pytestmark = pytest.mark.slow


def test_nan_producing_strategy_is_reported_failed_and_the_grid_finishes(tmp_path):
    diverging = {
        "benchmark": {"models": ["tiny_resnet"], "strategies": ["lp", "explode"]},
        "strategies": {"explode": {"kind": "fft", "lr": 1.0e12}},  # the loss becomes inf/NaN within an epoch
        "regimes": {"full": True, "fewshot": {"k": [4], "repetitions": 1}},
        "validation": {"folds": 2},
        "training": {"max_epochs": 3, "patience": 2},
        "report": {"hierarchical": False},
    }
    config = write_config(tmp_path / "diverging.yaml", diverging)
    snakemake(ROOT, tmp_path / "work", "--configfile", str(DEMO), str(config), "--cores", "2")
    results = tmp_path / "work" / "results"
    cells = pl.read_parquet(results / "cells.parquet")
    failed = cells.filter(pl.col("strategy") == "explode")
    assert failed.height == 4 and (failed["status"] == "failed").all()
    assert failed["error"].str.contains("loss is").all() and failed["mcc"].is_null().all()
    assert (cells.filter(pl.col("strategy") == "lp")["status"] == "ok").all()
    html = (results / "report" / "index.html").read_text()
    assert "Failed cells (4)" in html and "loss is" in html
    # external validation of the failed cells: failed folds that say why; the others are scored
    external = pl.read_parquet(results / "external" / "cells.parquet")
    lost = external.filter(pl.col("strategy") == "explode")
    assert lost.height == 2 and lost["error"].str.contains("the source cell failed").all()
    assert (external.filter(pl.col("strategy") == "lp")["status"] == "ok").all()
