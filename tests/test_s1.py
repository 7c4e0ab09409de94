"""The first study's preset (workflow/presets/s1.yaml): its settings resolve as its run configurations give them,
and the whole preset runs end to end when its tasks and models are swapped for the demo's."""

import polars as pl
import pytest
from conftest import ROOT
from smk import snakemake, write_config

from ftbench.plan import grid
from ftbench.plan.config import load

S1 = ROOT / "workflow" / "presets" / "s1.yaml"


@pytest.fixture(scope="module")
def s1() -> dict:
    return load(ROOT / "config.yaml", S1)


def _settings(config: dict, task: str, model: str, strategy: str) -> dict:
    job = next(
        j for j in grid.jobs(config) if (j.task, j.model, j.strategy, j.group) == (task, model, strategy, "full")
    )
    return grid.job_settings(config, job, grid.jobs(config)[job])


def test_s1_settings_resolve_as_its_configs_give_them(s1):
    fft = _settings(s1, "nysbu_death", "resnet18", "s1_fft")
    assert (fft["training"]["batch_size"], fft["training"]["lr"], fft["training"]["seed"]) == (128, 1e-5, 42)
    assert [c["strategy"]["head_lr"] for c in fft["candidates"]] == [1e-2, 1e-3, 1e-4]  # chosen on validation
    assert _settings(s1, "car_icu", "resnet18", "s1_bitfit")["training"]["batch_size"] == 32
    assert _settings(s1, "cohen_death", "resnet18", "s1_bitfit")["training"]["batch_size"] == 64
    lora = _settings(s1, "afc_death", "dinov2_vits14", "s1_lora_r4")
    assert (
        lora["strategy"]["rank"],
        lora["strategy"]["alpha"],
        lora["strategy"]["dropout"],
        lora["training"]["lr"],
    ) == (4, 1, 0.1, 1e-4)
    # the targets of the model's family: DINOv2 qkv, fc1, fc2; CLIP q, k, v; CNNs conv1
    assert lora["strategy"]["target_modules"] == [r"(?:.*\.)?blocks\.\d+\.(?:attn\.qkv|mlp\.fc[12])"]
    assert _settings(s1, "afc_death", "clip_vitl14", "s1_lora_r4")["strategy"]["target_modules"] == [
        r"model\.encoder\.layers\.\d+\.self_attn\.[qkv]_proj"
    ]
    assert _settings(s1, "afc_death", "resnet50", "s1_lora_r8")["strategy"]["target_modules"] == [r"(?:.*\.)?conv1"]
    assert s1["regimes"]["fewshot"]["k"] == [2, 4, 8, 16, 32] and grid.fold_count(s1, "afc_severity") == 6
    assert s1["training"]["schedule"] == {"name": "plateau", "warmup_epochs": 50, "patience": 25, "min_lr": 1e-8}


@pytest.mark.slow
def test_s1_runs_end_to_end_on_the_demo_data(tmp_path):
    """Every strategy of the preset, with its per-family targets and head-lr candidates, on the demo's synthetic
    task and tiny models (2 folds, K=2 only, a few epochs so that it runs on a CPU in about two minutes)."""
    demo = load(ROOT / "config.yaml", ROOT / "workflow" / "presets" / "demo.yaml")
    swap = write_config(
        tmp_path / "swap.yaml",
        {
            "benchmark": {"tasks": ["synthetic_outcome"], "models": ["tiny_vit", "tiny_resnet"]},
            "datasets": {"synthetic": demo["datasets"]["synthetic"]},
            "tasks": {"synthetic_outcome": demo["tasks"]["synthetic_outcome"] | {"batch_size": 32}},
            "models": {"tiny_vit": demo["models"]["tiny_vit"], "tiny_resnet": demo["models"]["tiny_resnet"]},
            "regimes": {"full": False, "fewshot": {"k": [2], "repetitions": 1}},
            "validation": {"folds": 2},
            "training": {
                "max_epochs": 2,
                "patience": 1,
                "schedule": {"name": "plateau", "warmup_epochs": 1},
                "threads": 1,
            },
            "report": {"bootstrap": 20},
        },
    )
    snakemake(ROOT, tmp_path, "--configfile", str(S1), str(swap), "--cores", "2", timeout=3000)
    cells = pl.read_parquet(tmp_path / "results" / "cells.parquet")
    # 10 strategies on the ViT, 7 on the ResNet (no VeRA on convolutions) x K=2 x 2 folds
    assert cells.height == (10 + 7) * 2 and (cells["status"] == "ok").all()
    assert cells["chosen"].str.starts_with("head_lr=").all()  # each cell chose its head lr on validation
    assert (cells["regime"] == "k2r0").all()
    assert (cells["train_patients"] == 4).all() and (cells["val_patients"] <= 4).all()
    assert (tmp_path / "results" / "report" / "index.html").is_file()
