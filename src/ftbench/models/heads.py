"""What the linear head reads: the backbone's pooled output, or DINOv2's linear-evaluation input.

DINOv2's linear evaluation (Oquab et al. 2023), which the first study's configs use for every transformer model
(``n_last_blocks: [1, 4]`` x ``avgpools: [True, False]``), gives the head the class tokens of the last
``n_last_blocks`` blocks, each through the final norm, concatenated, and with ``avgpool`` also the average of
the last block's patch tokens through that norm. One block without the average is the class token after the
final norm: the backbone's pooled output, so that head needs nothing here.

The layouts that have a class token (``strategy_kinds.TOKEN_LAYOUTS``) name their final norm and their count
of prefix tokens here. The blocks' outputs are caught by forward hooks registered for one forward pass only,
so they see each block's final output after any hook a strategy put there (VPT removes its prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ftbench.models import strategy_kinds as kinds
from ftbench.models.backbones import Classifier, blocks
from ftbench.models.zoo import ZooEntry


@dataclass(frozen=True)
class TokenLayout:
    """Where a layout keeps its final norm (module name in the backbone) and how many prefix tokens (class,
    registers) come before the patch tokens."""

    norm: str
    prefix: Callable[[nn.Module], int]


TOKEN_LAYOUTS: dict[str, TokenLayout] = {
    "timm_vit": TokenLayout("norm", lambda backbone: backbone.num_prefix_tokens),
    "hf_clip": TokenLayout("model.post_layernorm", lambda backbone: 1),  # CLIP: the class token, then patches
}


class BlockTokens:
    """The head's input read from a backbone's last ``n_last_blocks`` blocks (and, with ``avgpool``, the mean
    of the last block's patch tokens), each through the final norm: ``width`` features per image."""

    def __init__(self, backbone: nn.Module, entry: ZooEntry, n_last_blocks: int, avgpool: bool, features: int):
        names = blocks(backbone, entry)
        if n_last_blocks > len(names):
            raise ValueError(f"n_last_blocks {n_last_blocks}: '{entry.name}' has {len(names)} blocks")
        self.blocks, self.avgpool = names[-n_last_blocks:], avgpool
        self.layout = TOKEN_LAYOUTS[entry.layout]
        self.width = features * (n_last_blocks + avgpool)

    def __call__(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        outputs: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable:
            return lambda module, args, out: outputs.__setitem__(name, out[0] if isinstance(out, tuple) else out)

        hooks = [backbone.get_submodule(name).register_forward_hook(keep(name)) for name in self.blocks]
        try:
            backbone(x)
        finally:
            for hook in hooks:
                hook.remove()
        norm = backbone.get_submodule(self.layout.norm)
        tokens = [norm(outputs[name][:, 0]) for name in self.blocks]
        if self.avgpool:
            tokens.append(norm(outputs[self.blocks[-1]][:, self.layout.prefix(backbone) :]).mean(1))
        return torch.cat(tokens, -1)


def read(model: Classifier, entry: ZooEntry, strategy: dict) -> None:
    """Give ``model`` the head a strategy's resolved settings ask for: with ``n_last_blocks`` above 1 or ``avgpool``
    a wider head on :class:`BlockTokens`, else the pooled output as built. Call before the head's initialisation."""
    if not kinds.reads_tokens(strategy):
        return
    tokens = BlockTokens(
        model.backbone, entry, strategy.get("n_last_blocks", 1), strategy.get("avgpool", False), model.head.in_features
    )
    model.tokens = tokens
    model.head = nn.Linear(tokens.width, model.head.out_features, device=model.head.weight.device)
