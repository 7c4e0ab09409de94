"""Build a backbone from its zoo entry and put a binary classification head on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ftbench.zoo import ZooEntry


def _timm(entry: ZooEntry) -> nn.Module:
    import timm

    kwargs = {"img_size": entry.img_size} if entry.kind == "vit" else {}
    if entry.kind == "vit":
        kwargs["global_pool"] = "token"  # the classifier reads the CLS token (protocol)
    return timm.create_model(entry.name, pretrained=False, num_classes=0, **kwargs)


# loader name -> function building the randomly initialised feature extractor (``num_features`` wide)
LOADERS: dict[str, Callable[[ZooEntry], nn.Module]] = {
    "timm": _timm,
}


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain state dict; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class Classifier(nn.Module):
    """Backbone features -> linear head with two logits. Strategies always train ``head``."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int = 2, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        self.init_head(seed)

    def init_head(self, seed: int) -> None:
        """nn.Linear's default initialisation from a generator of its own: the head starts the same
        whatever was drawn for the backbone (so a probe on cached features equals one on the backbone)."""
        gen = torch.Generator().manual_seed(seed)
        bound = 1 / self.head.in_features**0.5
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound, generator=gen)
            self.head.bias.uniform_(-bound, bound, generator=gen)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(entry: ZooEntry, weights: str | Path | None = None) -> Classifier:
    """The classifier for ``entry``; ``weights`` (a local file) replace the random initialisation.

    The random initialisation has a fixed seed: a random-weight backbone is the same in every cell and
    in the embedding cache, as a pretrained one would be.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = LOADERS[entry.loader](entry)
    if weights is not None:
        missing, unexpected = backbone.load_state_dict(load_state(weights), strict=False)
        if missing:
            raise ValueError(f"weight file {weights} lacks {len(missing)} tensors of '{entry.name}', e.g. {missing[:3]}")
    return Classifier(backbone, backbone.num_features)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
