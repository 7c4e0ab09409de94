"""The model zoo: what each named backbone is, without importing torch.

An entry says where the backbone comes from and how to feed and read it; ``ftbench.backbones`` turns
an entry into a module. Any timm architecture name also works as ``arch`` (see :func:`resolve`).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ZooEntry:
    """One backbone: its builder (``loader``), weight source and how to feed and read it."""

    loader: str  # key of ftbench.backbones.LOADERS
    name: str  # architecture name understood by the loader
    kind: str  # "cnn" or "vit": which strategies and PEFT targets apply
    family: str = "custom"  # report grouping: cnn, fm-general, fm-biomedical
    source: str | None = None  # pretrained weight source (hub id / pretrained tag), None = random init only
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = "see source"
    targets: tuple[str, ...] = field(default=())  # module-name regexes PEFT adapters attach to


VIT_TARGETS = (r".*\.(qkv|proj|fc1|fc2)$",)
CNN_TARGETS = (r".*conv\d*$",)

ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry("timm", "resnet18", "cnn", "cnn", "resnet18.tv_in1k", license="BSD-3 (torchvision)"),
    "resnet50": ZooEntry("timm", "resnet50", "cnn", "cnn", "resnet50.tv_in1k", license="BSD-3 (torchvision)"),
    "densenet121": ZooEntry("timm", "densenet121", "cnn", "cnn", "densenet121.tv_in1k", license="BSD-3 (torchvision)"),
    "vgg19": ZooEntry("timm", "vgg19", "cnn", "cnn", "vgg19.tv_in1k", license="BSD-3 (torchvision)"),
    "dinov2_vits14": ZooEntry(
        "timm", "vit_small_patch14_dinov2", "vit", "fm-general", "vit_small_patch14_dinov2.lvd142m",
        img_size=518, license="Apache-2.0"),
    "dinov2_vitb14": ZooEntry(
        "timm", "vit_base_patch14_dinov2", "vit", "fm-general", "vit_base_patch14_dinov2.lvd142m",
        img_size=518, license="Apache-2.0"),
    "dinov2_vitl14": ZooEntry(
        "timm", "vit_large_patch14_dinov2", "vit", "fm-general", "vit_large_patch14_dinov2.lvd142m",
        img_size=518, license="Apache-2.0"),
}


@functools.lru_cache(maxsize=1)
def timm_architectures() -> frozenset[str]:
    """timm's registered architecture names, read from its source so that torch is not imported.

    timm registers every architecture with ``@register_model`` on a function of the same name; scanning
    the files takes milliseconds, while ``import timm`` takes seconds in every Slurm job's parse.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        return frozenset()
    pattern = re.compile(r"@register_model(?:\([^)]*\))?\s*\ndef\s+(\w+)\s*\(")
    names: set[str] = set()
    for path in (Path(spec.origin).parent / "models").glob("*.py"):
        names.update(pattern.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def is_known_arch(arch: str) -> bool:
    """A zoo key or a timm architecture (with or without a ``.pretrained_tag``)."""
    return arch in ZOO or arch.split(".")[0] in timm_architectures()


def resolve(arch: str, img_size: int | None = None, pretrained: bool = False) -> ZooEntry:
    """The zoo entry for ``arch``; a bare timm name gets a generic entry (ViT if it has no convs)."""
    if arch in ZOO:
        entry = ZOO[arch]
    elif is_known_arch(arch):
        base, _, tag = arch.partition(".")
        kind = "vit" if re.search(r"vit|deit|beit|eva|swin|dinov2", base) else "cnn"
        entry = ZooEntry("timm", base, kind, "custom", arch if tag else None,
                         mean=(0.5, 0.5, 0.5) if base.startswith("test_") else IMAGENET_MEAN,
                         std=(0.5, 0.5, 0.5) if base.startswith("test_") else IMAGENET_STD)
    else:
        raise KeyError(f"unknown architecture '{arch}': not a zoo key ({', '.join(sorted(ZOO))}) nor a timm name")
    entry = replace(entry, targets=entry.targets or (VIT_TARGETS if entry.kind == "vit" else CNN_TARGETS))
    if not pretrained:
        entry = replace(entry, source=None)
    return replace(entry, img_size=img_size) if img_size else entry
