"""The first study's preset (workflow/presets/s1.yaml): its settings resolve as its run configurations give them,
and the whole preset runs end to end when its tasks and models are swapped for the demo's."""

import itertools
import re
from dataclasses import replace

import polars as pl
import pytest
import torch
from conftest import ROOT
from smk import snakemake, write_config

from ftbench import splits
from ftbench.models import backbones, heads, strategies
from ftbench.models import strategy_kinds as kinds
from ftbench.models.zoo import resolve
from ftbench.plan import flop_cost, grid
from ftbench.plan.config import load

S1 = ROOT / "workflow" / "presets" / "s1.yaml"


@pytest.fixture(scope="module")
def s1() -> dict:
    return load(ROOT / "config.yaml", S1)


# S1's model configs (cosbidev/Deep-Sick, src/configs/PEFT_runs/experiment/models/*.yaml at 4f0d348; biomedclip.yaml
# at 99b9fb0): the head candidates and VeRA's `modules_target_same_shape`, S1's module names
S1_HEADS = {"n_last_blocks": [1, 4], "avgpools": [True, False], "learning_rates": [1e-2, 1e-3, 1e-4]}
S1_SAME_SHAPE = {
    "dinov2_vitb14": ["qkv"],
    "biomedclip": ["qkv"],
    "clip_vitl14": ["k_proj", "q_proj", "v_proj"],
    "pubmedclip": ["k_proj", "q_proj", "v_proj"],
    "medclip_vit": ["query", "value", "key"],
}
# each model's modules, as the zoo names them (one block's worth), and the S1 name each answers to
MODULES = {
    "dinov2_vitb14": {"blocks.3.attn.qkv": "qkv", "blocks.3.attn.proj": "proj", "blocks.3.mlp.fc1": "fc1"},
    "biomedclip": {"blocks.3.attn.qkv": "qkv", "blocks.3.attn.proj": "proj", "blocks.3.mlp.fc2": "fc2"},
    "clip_vitl14": {
        **{f"model.encoder.layers.5.self_attn.{p}_proj": f"{p}_proj" for p in "qkv"},
        "model.encoder.layers.5.self_attn.out_proj": "out_proj",
        "model.encoder.layers.5.mlp.fc1": "fc1",
    },
    "medclip_vit": {
        **{f"model.encoder.layers.1.blocks.0.attention.{p}_proj": s for p, s in zip("qkv", ("query", "key", "value"))},
        "model.encoder.layers.1.blocks.0.attention.o_proj": "dense",
        "model.encoder.layers.1.blocks.0.mlp.fc1": "dense",
    },
}
MODULES["pubmedclip"] = MODULES["clip_vitl14"]


def _settings(config: dict, task: str, model: str, strategy: str) -> dict:
    return grid.cell_settings(config, grid.Cell(task, model, strategy, "full", 0))


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
    assert s1["datasets"]["aiforcovid"]["bbox"] == "box_data_AFC.xlsx"  # databases/AFC*.yaml: imaging.bbox.box_file
    assert s1["regimes"]["fewshot"]["k"] == [2, 4, 8, 16, 32] and grid.fold_count(s1, "afc_severity") == 6
    assert s1["training"]["schedule"] == {"name": "plateau", "warmup_epochs": 50, "patience": 25, "min_lr": 1e-8}


def _heads(settings: dict) -> list[tuple]:
    return [
        (c["strategy"]["head_lr"], c["strategy"].get("n_last_blocks", 1), c["strategy"].get("avgpool", False))
        for c in settings.get("candidates", [settings])
    ]


def test_s1_heads_are_its_dinov2_style_candidates_on_transformers(s1):
    """12 heads (n_last_blocks x avgpools x head lr) on every model with a class token, for every strategy but
    IA3 (S1's override: one block, no average); the CNNs' configs give one head, and MedCLIP-ViT's Swin has none."""
    twelve = set(itertools.product(S1_HEADS["learning_rates"], S1_HEADS["n_last_blocks"], S1_HEADS["avgpools"]))
    three = {(lr, 1, False) for lr in S1_HEADS["learning_rates"]}
    for strategy in ("s1_fft", "s1_lp", "s1_lora_r8", "s1_vera_r4", "s1_bitfit"):
        for model in ("dinov2_vits14", "biomedclip", "clip_vitl14", "pubmedclip"):
            got = _heads(_settings(s1, "nysbu_death", model, strategy))
            assert (len(got), set(got)) == (12, twelve), (strategy, model)
    assert set(_heads(_settings(s1, "nysbu_death", "dinov2_vits14", "s1_ia3"))) == three
    for model in ("resnet50", "medclip_resnet50", "medclip_vit"):
        assert set(_heads(_settings(s1, "nysbu_death", model, "s1_lora_r4"))) == three
    # a head on several blocks cannot come from the embedding cache (the pooled output): LP runs the backbone
    lp = grid.Job("nysbu_death", "dinov2_vits14", "s1_lp", "full")
    assert "embeddings" not in grid.job_inputs(s1, lp) and "store" in grid.job_inputs(s1, lp)
    assert "embeddings" in grid.job_inputs(s1, grid.Job("nysbu_death", "resnet50", "s1_lp", "full"))


@pytest.mark.parametrize("model", sorted(S1_SAME_SHAPE))
def test_s1_vera_targets_are_its_same_shape_modules(s1, model):
    """VeRA's targets select exactly the modules S1's `modules_target_same_shape` names, at S1's ranks."""
    targets = re.compile("|".join(_settings(s1, "nysbu_death", model, "s1_vera_r8")["strategy"]["target_modules"]))
    chosen = sorted(s1_name for name, s1_name in MODULES[model].items() if targets.fullmatch(name))
    assert chosen == sorted(S1_SAME_SHAPE[model])
    ranks = [_settings(s1, "nysbu_death", model, f"s1_vera_r{r}")["strategy"]["rank"] for r in (4, 8, 16)]
    assert ranks == [4, 8, 16]


def _tiny(arch: str):
    entry = resolve(arch, 64 if arch == "test_vit" else 56)
    if arch == "clip_vitl14":
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 5, "num_attention_heads": 2}
        entry = replace(entry, options={"config": entry.options["config"] | small})
    return backbones.build(entry), entry


@pytest.mark.parametrize("arch", ["test_vit", "clip_vitl14"])
def test_block_token_heads_read_dinov2s_linear_evaluation_input(arch):
    """The head's input equals the reference computed another way: timm's get_intermediate_layers (normed), and
    transformers' hidden states through CLIP's post_layernorm; 1 block without the average is the pooled output."""
    model, entry = _tiny(arch)
    x = torch.randn(2, 3, entry.img_size, entry.img_size, generator=torch.Generator().manual_seed(0))
    backbone = model.backbone.eval()
    with torch.no_grad():
        if arch == "test_vit":
            layers = backbone.get_intermediate_layers(x, n=4, return_prefix_tokens=True, norm=True)
            cls, patches = [prefix[:, 0] for _, prefix in layers], layers[-1][0]
        else:
            hidden = backbone.model(pixel_values=x, output_hidden_states=True).hidden_states[-4:]
            norm = backbone.model.post_layernorm
            cls, patches = [norm(h[:, 0]) for h in hidden], norm(hidden[-1][:, 1:])
        one = heads.BlockTokens(backbone, entry, 1, False, model.head.in_features)(backbone, x)
        four = heads.BlockTokens(backbone, entry, 4, True, model.head.in_features)(backbone, x)
        torch.testing.assert_close(one, backbone(x))
        torch.testing.assert_close(four, torch.cat([*cls, patches.mean(1)], -1))


def test_a_block_token_head_trains_under_an_adapter():
    model, entry = _tiny("test_vit")
    heads.read(model, entry, {"n_last_blocks": 4, "avgpool": True})
    plan = strategies.apply(model, entry, {"kind": "lora", "rank": 2}, {"lr": 1e-3})
    assert model.head.in_features == 5 * 64 and model(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in plan.parameters())
    heads.read(model2 := _tiny("test_vit")[0], entry, {"n_last_blocks": 1, "avgpool": False})
    assert model2.tokens is None  # one block, no average: the pooled output


def test_a_block_token_head_on_a_model_without_a_class_token_is_refused():
    spec = {"name": "s", "kind": "lp", "head_lr": 0.1, "n_last_blocks": 4}
    with pytest.raises(ValueError, match=r"'s'.*layout cnn.*timm_vit, hf_clip"):
        kinds.resolve(spec, resolve("resnet18"), {"lr": 0.1})
    assert len(kinds.resolve(spec | {"n_last_blocks": {"timm_vit": [1, 4]}}, resolve("resnet18"), {"lr": 0.1})) == 1


def test_s1_leaves_out_the_few_shot_k_cohens_deaths_cannot_give(s1):
    """cohen_death: 14 deaths (admission images), 5-fold, 20 % validation: 9 training deaths in the smallest fold, so S1's K = 16 and 32
    are left out at planning, named with the task, K and the class count; K = 8 stays, and so do other tasks."""
    left_out = grid.not_possible(s1)
    assert set(left_out) == {("cohen_death", "k16"), ("cohen_death", "k32")}
    assert all("cohen_death" in r and "14 positive" in r and "9 of them" in r for r in left_out.values())
    assert "K=16" in left_out[("cohen_death", "k16")]
    groups = {(c.task, c.job.group) for c in grid.cells(s1)}
    assert flop_cost.settings(s1)["tasks"]["cohen_death"] == {"patients": 77, "images": 77}  # the classes are ours
    assert ("cohen_death", "k8") in groups and ("cohen_death", "k16") not in groups and ("car_icu", "k32") in groups


@pytest.mark.parametrize("scheme", [{"scheme": "kfold", "folds": 5}, {"scheme": "holdout", "test_fraction": 0.3}])
def test_planning_s_training_minimum_is_what_the_splits_make(scheme):
    """The count planning derives from a class's size equals the fewest training patients splits.make gives it."""
    validation = scheme | {"val_fraction": 0.2, "seed": 3}
    for positives in (5, 7, 15, 16, 23, 31):
        labels = [1] * positives + [0] * 40
        table = pl.DataFrame({"patient_id": [f"p{i}" for i in range(len(labels))], "label": labels})
        made = min(fold["train_patients"]["positive"] for fold in splits.make(table, validation, "t")[1])
        assert grid.TRAINING_MINIMUM[scheme["scheme"]](positives, validation) == made, positives


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
            # K=64 is more than the declared 32 positives leave in a fold: left out, listed by the report
            "regimes": {"full": False, "fewshot": {"k": [2, 64], "repetitions": 1}},
            "cost": {
                "tasks": {
                    "synthetic_outcome": {"patients": 80, "images": 160, "classes": {"negative": 48, "positive": 32}}
                }
            },
            "validation": {"folds": 2},
            "training": {
                "max_epochs": 2,
                "patience": 1,
                "schedule": {"name": "plateau", "warmup_epochs": 1},
                "threads": 1,
            },
            "report": {"bootstrap": 20, "hierarchical": False},
            # one block-token head (4 blocks with the average) instead of the 4 head types: the same code path, a
            # quarter of the candidates
            "strategies": {
                name: {"n_last_blocks": {"timm_vit": [4]}, "avgpool": {"timm_vit": [True]}}
                for name in ("s1_fft", "s1_lp", "s1_lora_r4", "s1_lora_r8", "s1_lora_r16", "s1_vera_r4", "s1_vera_r8")
                + ("s1_vera_r16", "s1_bitfit")
            },
        },
    )
    snakemake(ROOT, tmp_path, "--configfile", str(S1), str(swap), "--cores", "2", timeout=3000)
    cells = pl.read_parquet(tmp_path / "results" / "cells.parquet")
    # 10 strategies on the ViT, 7 on the ResNet (no VeRA on convolutions) x K=2 x 2 folds
    assert cells.height == (10 + 7) * 2 and (cells["status"] == "ok").all()
    assert cells["chosen"].str.starts_with("head_lr=").all()  # each cell chose its head lr on validation
    assert (cells["regime"] == "k2r0").all()
    assert (cells["train_patients"] == 4).all() and (cells["val_patients"] <= 4).all()
    html = (tmp_path / "results" / "report" / "index.html").read_text()
    assert "Not possible with this data (1)" in html and "K=64: task &#x27;synthetic_outcome&#x27;" in html
