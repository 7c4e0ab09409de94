"""No strategy is inert: on every backbone family of the zoo, one Adam step on the parameters a strategy trains in
the backbone (head frozen) moves the train-mode logits. A strategy whose parameters cannot change the model (a
scale a BatchNorm renormalises, an adapter on no module) would report linear probing under another name.

Every zoo entry's family is built small (random weights, 32 px, fewer/narrower layers where the entry allows),
with the norms given random affine weights and statistics, as pretrained ones have.
"""

import dataclasses

import pytest
import torch

from ftbench.models import backbones, strategies, strategy_kinds
from ftbench.models.zoo import ZOO, resolve

TINY_CLIP = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "hidden_act": "quick_gelu",
}
# one backbone per family of the zoo (and per entry where two entries of a family load differently)
FAMILIES = {
    "resnet18 (BatchNorm CNN)": ("resnet18", {"name": "test_resnet"}),
    "densenet121 (BatchNorm before each convolution)": (
        "densenet121",
        {"model_args": {"growth_rate": 8, "block_config": (2, 2, 2, 2)}},
    ),
    "vgg19 (CNN without normalisation)": ("vgg19", {"name": "vgg11", "model_args": {"mlp_ratio": 0.01}}),
    "dinov2_vits14 (timm ViT with LayerScale)": ("dinov2_vits14", {"model_args": {"depth": 2}}),
    "biomedclip (timm ViT)": ("biomedclip", {"model_args": {"depth": 2, "embed_dim": 64, "num_heads": 2}}),
    "clip_vitl14 (transformers CLIP tower)": ("clip_vitl14", {"config": TINY_CLIP}),
    "pubmedclip (transformers CLIP tower)": ("pubmedclip", {"config": TINY_CLIP}),
    "medclip_vit (transformers Swin)": (
        "medclip_vit",
        {"config": {"embed_dim": 32, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2, "patch_size": 4}},
    ),
}
TRAINED = sorted(k for k, kind in strategy_kinds.KINDS.items() if kind.mode == "trained")
PAIRS = [
    (family, kind)
    for family in FAMILIES
    for kind in TRAINED
    if not strategy_kinds.not_applicable(kind, resolve(FAMILIES[family][0]))
]


def small(key: str) -> tuple[backbones.Classifier, object]:
    arch, options = FAMILIES[key]
    name = options.get("name", ZOO[arch].name)
    entry = dataclasses.replace(
        resolve(arch, img_size=32),
        name=name,
        options=ZOO[arch].options | {k: v for k, v in options.items() if k != "name"},
    )
    torch.manual_seed(0)
    model = backbones.build(entry)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if hasattr(m, "gamma") and isinstance(m.gamma, torch.nn.Parameter):  # LayerScale (DINOv2: 1e-5 at init)
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=gen) + 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model, entry


# AdaLoRA's update P·diag(E)·Q starts with E = 0 and P, Q ~ N(0, 0.02²): its first step moves E alone, by a
# product of two small factors; from the second, all three move. Every other kind is judged after one step.
STEPS = {"adalora": 2}


def logit_shift(model: backbones.Classifier, entry, kind: str, **settings) -> float:
    """|Δ logits| / |logits| in train mode after one Adam step (lr 1e-2) on the backbone parameters the
    strategy trains, its schedule run to its last phase first (LP-FT, gradual unfreezing)."""
    plan = strategies.apply(model, entry, {"kind": kind} | settings, {"lr": 1e-2, "weight_decay": 0.0})
    optimizer = torch.optim.Adam(plan.param_groups)
    for epoch in range(64):
        if plan.on_epoch is not None:
            plan.on_epoch(optimizer, epoch)
    head = set(map(id, model.head.parameters()))
    for group in optimizer.param_groups:
        group["params"], group["lr"] = [p for p in group["params"] if id(p) not in head], 1e-2
    model.head.requires_grad_(False)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    model.train()
    before = model(x).detach()
    for _ in range(STEPS.get(kind, 1)):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if plan.penalty is not None:
            loss = loss + plan.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float((model(x).detach() - before).norm() / before.norm())


@pytest.mark.parametrize("family, kind", PAIRS)
def test_one_step_of_the_strategys_backbone_parameters_moves_the_logits(family, kind):
    model, entry = small(family)
    assert logit_shift(model, entry, kind) >= 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_probing_trains_nothing_in_the_backbone(family):
    model, entry = small(family)
    plan = strategies.apply(model, entry, {"kind": "lp"}, {"lr": 1e-2, "weight_decay": 0.0})
    assert not plan.trains(model.backbone)


def test_the_criterion_catches_a_scale_that_batchnorm_renormalises():
    """peft's default IA3 on a CNN rescales each convolution's output, which the BatchNorm after it undoes: that
    cell would be linear probing under IA3's name. ftbench rescales the convolutions' inputs instead."""
    model, entry = small("resnet18 (BatchNorm CNN)")
    assert logit_shift(model, entry, "ia3", feedforward_modules=["^$"]) < 1e-4
