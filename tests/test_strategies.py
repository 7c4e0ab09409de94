"""Strategies: each trains exactly the parameters it claims to, on a tiny ViT and a tiny CNN."""

import pytest
import torch

from ftbench import backbones, strategies
from ftbench.zoo import resolve

TRAINING = {"lr": 1e-3, "weight_decay": 0.0}
ARCHS = ["test_vit", "test_resnet"]


def _model(arch):
    entry = resolve(arch, img_size=32)
    torch.manual_seed(0)
    return backbones.build(entry), entry


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _optimised(plan):
    return {id(p) for g in plan.param_groups for p in g["params"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_fft_trains_everything(arch):
    model, entry = _model(arch)
    plan = strategies.apply(model, entry, {"kind": "fft"}, TRAINING)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    assert _optimised(plan) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("arch", ARCHS)
def test_lp_trains_only_the_head(arch):
    model, entry = _model(arch)
    plan = strategies.apply(model, entry, {"kind": "lp"}, TRAINING)
    assert _trainable(model) == {"head.weight", "head.bias"}
    assert _optimised(plan) == {id(model.head.weight), id(model.head.bias)}
    trainable, total = backbones.count_parameters(model)
    assert trainable == model.head.weight.numel() + 2 and total > 10 * trainable


@pytest.mark.parametrize("arch", ARCHS)
def test_bitfit_trains_biases_and_head(arch):
    model, entry = _model(arch)
    strategies.apply(model, entry, {"kind": "bitfit"}, TRAINING)
    expected = {n for n, _ in model.named_parameters() if n.endswith("bias")} | {"head.weight"}
    assert _trainable(model) == expected
    assert any(n.startswith("backbone.") for n in expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_adapters_and_head(arch):
    model, entry = _model(arch)
    frozen_before = sum(p.numel() for p in model.backbone.parameters())
    strategies.apply(model, entry, {"kind": "lora", "rank": 4}, TRAINING)
    trainable = _trainable(model)
    adapters = {n for n in trainable if "lora_" in n}
    assert adapters and trainable == adapters | {"head.weight", "head.bias"}
    # every adapted layer got an A and a B matrix of rank 4
    a_mats = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert all(4 in p.shape for p in a_mats)
    if arch == "test_vit":
        assert any(".attn.qkv.lora_A" in n for n in adapters) and any(".mlp.fc2.lora_B" in n for n in adapters)
    else:
        assert any("conv" in n for n in adapters)
    base = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" not in n)
    assert base == frozen_before  # base weights untouched, only adapters added


def test_lora_starts_as_the_identity():
    """LoRA's B matrix starts at zero: before training the adapted model computes what the original did."""
    model, entry = _model("test_vit")
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    before = model(x)
    strategies.apply(model, entry, {"kind": "lora", "rank": 4}, TRAINING)
    model.eval()
    assert torch.allclose(before, model(x), atol=1e-6)
