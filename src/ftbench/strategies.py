"""Where fine-tuning strategies are set up: which parameters train and with which learning rates.

Each strategy is a function ``(model, spec, training) -> Plan`` in :data:`STRATEGIES`; it freezes or
adapts the model in place and returns the optimizer parameter groups. The head always trains.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ftbench.backbones import Classifier
from ftbench.zoo import ZooEntry


@dataclass
class Plan:
    """What the training loop needs from a strategy."""

    param_groups: list[dict]


def _freeze_backbone(model: Classifier) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(False)


def _head_group(model: Classifier, spec: dict, training: dict) -> dict:
    return {"params": list(model.head.parameters()), "lr": spec.get("head_lr", training["lr"]), "name": "head"}


def _trainable_backbone_group(model: Classifier, training: dict) -> dict:
    return {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": training["lr"],
            "name": "backbone"}


def fft(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Full fine-tuning: every parameter trains."""
    return Plan([_trainable_backbone_group(model, training), _head_group(model, spec, training)])


def lp(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Linear probing: frozen backbone, only the head trains."""
    _freeze_backbone(model)
    return Plan([_head_group(model, spec, training)])


def bitfit(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """BitFit: only the backbone's biases (and the head) train."""
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return Plan([_trainable_backbone_group(model, training), _head_group(model, spec, training)])


def adapter_targets(backbone: nn.Module, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the Linear / ungrouped Conv2d / MultiheadAttention modules whose full name matches one of ``patterns``.

    peft adapts a MultiheadAttention (open_clip's CLIP blocks) on its fused q/k/v and its output projection.
    """
    regex = re.compile("|".join(f"(?:{p})" for p in patterns))
    names = [
        name for name, module in backbone.named_modules()
        if (isinstance(module, (nn.Linear, nn.MultiheadAttention))
            or (isinstance(module, nn.Conv2d) and module.groups == 1))
        and regex.fullmatch(name)
    ]
    if not names:
        raise ValueError(f"no Linear/Conv2d/MultiheadAttention module matches the adapter targets {list(patterns)}")
    return names


def lora(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """LoRA (peft) on the attention/MLP linears of a ViT or the convolutions of a CNN."""
    from peft import LoraConfig, inject_adapter_in_model

    rank = spec.get("rank", 8)
    config = LoraConfig(
        r=rank, lora_alpha=spec.get("alpha", 2 * rank), lora_dropout=spec.get("dropout", 0.0),
        target_modules=adapter_targets(model.backbone, spec.get("target_modules") or entry.targets),
    )
    model.backbone = inject_adapter_in_model(config, model.backbone)
    for name, p in model.backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    return Plan([_trainable_backbone_group(model, training), _head_group(model, spec, training)])


STRATEGIES: dict[str, Callable[[Classifier, ZooEntry, dict, dict], Plan]] = {
    "fft": fft,
    "lp": lp,
    "lora": lora,
    "bitfit": bitfit,
}


def apply(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Set ``model`` up for the strategy ``spec['kind']``; the head always trains."""
    plan = STRATEGIES[spec["kind"]](model, entry, spec, training)
    for p in model.head.parameters():
        p.requires_grad_(True)
    plan.param_groups = [g for g in plan.param_groups if g["params"]]
    return plan
