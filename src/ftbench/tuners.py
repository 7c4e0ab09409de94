"""Hand-written tuners that peft does not offer for vision backbones: SSF and VPT.

Both add parameters to existing modules (``<module>.ssf_scale``, ``blocks.N.vpt_prompts``) and act
through forward hooks, so the backbone's own parameter names and state dict keys stay unchanged.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

# Modules whose output has its channels on dim 1 (N, C, H, W); all others have them on the last dim.
CHANNELS_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm)


def _channels(module: nn.Module) -> int:
    for attr in ("out_features", "out_channels", "num_features", "num_channels"):
        if hasattr(module, attr):
            return getattr(module, attr)
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    raise TypeError(f"SSF cannot tell the output width of {type(module).__name__}")


def _scale_shift(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    first = isinstance(module, CHANNELS_FIRST) or type(module).__name__ == "LayerNorm2d"  # timm's NCHW norm
    shape = (-1, 1, 1) if first and out.dim() == 4 else (-1,)
    return out * module.ssf_scale.view(shape) + module.ssf_shift.view(shape)


def add_ssf(backbone: nn.Module, names: list[str]) -> None:
    """SSF (Lian et al. 2022): a learnable per-channel scale (1) and shift (0) after each named module.

    Starts as the identity; the scale and shift of a linear map can be merged into it after training.
    """
    for name in names:
        module = backbone.get_submodule(name)
        width = _channels(module)
        module.register_parameter("ssf_scale", nn.Parameter(torch.ones(width)))
        module.register_parameter("ssf_shift", nn.Parameter(torch.zeros(width)))
        module.register_forward_hook(_scale_shift)


def _insert_prompts(block: nn.Module, args: tuple, kwargs: dict, prefix: int, first: bool):
    x = args[0]
    prompts = block.vpt_prompts.expand(x.shape[0], -1, -1).to(x.dtype)
    rest = x[:, prefix:] if first else x[:, prefix + prompts.shape[1]:]  # deep: replace the previous ones
    return (torch.cat([x[:, :prefix], prompts, rest], 1), *args[1:]), kwargs


def _drop_prompts(block: nn.Module, args, out: torch.Tensor, prefix: int, tokens: int) -> torch.Tensor:
    return torch.cat([out[:, :prefix], out[:, prefix + tokens:]], 1)


def add_prompts(backbone: nn.Module, tokens: int, deep: bool) -> None:
    """VPT (Jia et al. 2022): ``tokens`` learnable prompt tokens after the class/register tokens.

    Shallow VPT inserts them before the first block; deep VPT gives every block its own prompts
    (replacing those of the block before). They are removed after the last block, so the final norm and
    the pooling see the original sequence. Needs a timm-style ViT (``blocks``, ``num_prefix_tokens``).
    """
    stack = getattr(backbone, "blocks", None)
    if stack is None or not hasattr(backbone, "num_prefix_tokens") or not hasattr(backbone, "embed_dim"):
        raise TypeError(f"VPT needs a ViT with a token sequence (blocks, num_prefix_tokens, embed_dim); "
                        f"{type(backbone).__name__} has none")
    prefix = backbone.num_prefix_tokens
    for i, block in enumerate(stack if deep else stack[:1]):
        block.register_parameter("vpt_prompts", nn.Parameter(nn.init.trunc_normal_(
            torch.empty(1, tokens, backbone.embed_dim), std=0.02)))
        block.register_forward_pre_hook(partial(_insert_prompts, prefix=prefix, first=i == 0), with_kwargs=True)
    stack[-1].register_forward_hook(partial(_drop_prompts, prefix=prefix, tokens=tokens))
