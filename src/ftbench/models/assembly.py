"""A cell's model, assembled: backbone (with its weights), head, strategy and input transform."""

from __future__ import annotations

import torch

from ftbench.models import backbones, heads, inputs, strategies, weights
from ftbench.models.zoo import ZooEntry, resolve


def model_entry(model_spec: dict) -> ZooEntry:
    """The zoo entry of a cell's model settings (architecture, image size, pretrained)."""
    return resolve(model_spec["arch"], model_spec.get("img_size"), model_spec.get("pretrained", False))


_FROZEN: dict[str, tuple[int, int, float | None]] = {}  # per zoo entry: the same for every cell of a job


def frozen_backbone(entry: ZooEntry) -> tuple[int, int, float | None]:
    """(feature width, backbone parameters, forward GFLOPs) of a backbone whose features come from the
    embedding cache: the full model is built on the meta device, without memory or compute, once per process."""
    key = repr(entry)
    if key not in _FROZEN:
        with torch.device("meta"):
            full = backbones.build(entry)
        _FROZEN[key] = (
            full.head.in_features,
            sum(p.numel() for p in full.backbone.parameters()),
            backbones.forward_gflops(full, entry.img_size),
        )
    return _FROZEN[key]


def build_model(settings: dict, cached: bool, device: torch.device, weights_path: str | None = None):
    """(model, strategy plan, input transform, frozen parameters not in the model, forward GFLOPs) of a cell.

    With ``cached`` the backbone is already applied (embedding cache): the model is the head alone on the
    features, and the full model is only instantiated on the meta device to report its size and cost.
    """
    model_spec, strategy, training = settings["model"], settings["strategy"], settings["training"]
    seed = training["seed"] + settings["fold"]
    entry = model_entry(model_spec)
    if cached:
        width, backbone_params, gflops = frozen_backbone(entry)
        model = backbones.Classifier(torch.nn.Identity(), width, seed=seed)
        plan = strategies.apply(model, entry, strategy, training)
        return model.to(device), plan, inputs.Features(device), backbone_params, gflops
    model = weights.build(model_spec["name"], entry, weights_path)
    heads.read(model, entry, strategy)
    model.init_head(seed)
    plan = strategies.apply(model, entry, strategy, training)
    # a frozen feature extractor sees un-augmented images, exactly as the embedding cache does
    frozen = not plan.trains(model.backbone)
    prep = inputs.Preprocess(entry, device, training["augment"] and not frozen, torch.Generator().manual_seed(seed))
    if device.type == "cuda" and entry.kind == "cnn":
        model = model.to(memory_format=torch.channels_last)  # the layout cuDNN's fast convolutions use
    return model.to(device), plan, prep, 0, backbones.forward_gflops(model, entry.img_size)
