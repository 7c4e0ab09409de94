"""The block structure of a backbone, from input to output: what layer-wise strategies act on.

Gradual unfreezing, layer-wise learning-rate decay and last-block tuning need to know which parameters
form "a block". :func:`blocks` splits a backbone's parameters into ``[stem, block_0, ..., block_N]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

# Module names (full match) that are a backbone's blocks, tried in order; the first pattern with a match
# wins. The last one, every top-level child, is the fallback for an unknown architecture.
BLOCK_PATTERNS = (
    r"blocks\.\d+",  # timm ViT / DeiT / BEiT / EVA / DINOv2, EfficientNet stages
    r"layer\d+",  # ResNet stages
    r"stages\.\d+",  # ConvNeXt, RegNet, MaxViT
    r"layers\.\d+",  # Swin
    r"features\.denseblock\d+",  # DenseNet (a transition joins the dense block before it)
    r"features\.\d+",  # VGG: every layer of the feature stack (parameter-free ones are dropped)
    r".*encoder\.layers?\.\d+",  # transformers CLIP vision towers
    r"[^.]+",  # fallback: the top-level children
)


@dataclass
class Block:
    """One block: its module name and its parameters, as (name in the backbone, parameter)."""

    name: str
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)


def blocks(backbone: nn.Module, pattern: str | None = None) -> list[Block]:
    """``[stem, block_0, ..., block_N]``, input to output; every parameter is in exactly one block.

    ``pattern`` (a zoo entry's ``blocks`` regex) names the blocks; without it the first of
    ``BLOCK_PATTERNS`` that matches is used.
    Parameters registered before the first block (patch embedding, class token, ResNet stem) make the
    ``stem``; any other parameter outside the blocks joins the block before it, so the final norm of a
    ViT belongs to its last block. Blocks without parameters are left out.
    """
    names = [name for name, _ in backbone.named_modules() if name]
    for candidate in (pattern,) if pattern else BLOCK_PATTERNS:
        regex = re.compile(candidate)
        found = [name for name in names if regex.fullmatch(name)]
        if found:
            break
    else:
        raise ValueError(f"no module of the backbone matches the block pattern {pattern!r}")
    out = [Block("stem")] + [Block(name) for name in found]
    current = out[0]
    for name, param in backbone.named_parameters():
        owner = next((b for b in out[1:] if name.startswith(b.name + ".")), None)
        current = owner or current
        current.params.append((name, param))
    return [b for b in out if b.params]
