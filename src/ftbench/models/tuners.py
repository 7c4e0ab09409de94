"""Hand-written tuners that peft does not offer for vision backbones (SSF and VPT), and the splits of fused
attention projections into Linear modules that adapters can target.

SSF and VPT add parameters to existing modules (``<module>.ssf_scale``, ``blocks.N.vpt_prompts``) and act
through forward hooks, so the backbone's own parameter names and state dict keys stay unchanged.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
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
    rest = x[:, prefix:] if first else x[:, prefix + prompts.shape[1] :]  # deep: replace the previous ones
    return (torch.cat([x[:, :prefix], prompts, rest], 1), *args[1:]), kwargs


def _drop_prompts(block: nn.Module, args, out: torch.Tensor, prefix: int, tokens: int) -> torch.Tensor:
    return torch.cat([out[:, :prefix], out[:, prefix + tokens :]], 1)


def add_prompts(backbone: nn.Module, tokens: int, deep: bool) -> None:
    """VPT (Jia et al. 2022): ``tokens`` learnable prompt tokens after the class/register tokens.

    Shallow VPT inserts them before the first block; deep VPT gives every block its own prompts
    (replacing those of the block before). They are removed after the last block, so the final norm and
    the pooling see the original sequence. Needs a timm-style ViT (``blocks``, ``num_prefix_tokens``).
    """
    stack = getattr(backbone, "blocks", None)
    if stack is None or not hasattr(backbone, "num_prefix_tokens") or not hasattr(backbone, "embed_dim"):
        raise TypeError(
            f"VPT needs a ViT with a token sequence (blocks, num_prefix_tokens, embed_dim); "
            f"{type(backbone).__name__} has none"
        )
    prefix = backbone.num_prefix_tokens
    for i, block in enumerate(stack if deep else stack[:1]):
        block.register_parameter(
            "vpt_prompts", nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens, backbone.embed_dim), std=0.02))
        )
        block.register_forward_pre_hook(partial(_insert_prompts, prefix=prefix, first=i == 0), with_kwargs=True)
    stack[-1].register_forward_hook(partial(_drop_prompts, prefix=prefix, tokens=tokens))


class QKV(nn.Module):
    """A fused query/key/value projection as three Linear layers ``q``, ``k``, ``v``: the same function (their
    outputs concatenated), with each part a module of its own that an adapter can target."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        width = fused.out_features // 3
        for i, name in enumerate("qkv"):
            part = nn.Linear(
                fused.in_features,
                width,
                bias=fused.bias is not None,
                device=fused.weight.device,
                dtype=fused.weight.dtype,
            )
            with torch.no_grad():
                part.weight.copy_(fused.weight[i * width : (i + 1) * width])
                if fused.bias is not None:
                    part.bias.copy_(fused.bias[i * width : (i + 1) * width])
            part.weight.requires_grad_(fused.weight.requires_grad)
            if fused.bias is not None:
                part.bias.requires_grad_(fused.bias.requires_grad)
            self.add_module(name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], -1)


def split_qkv(backbone: nn.Module) -> list[str]:
    """Replace every fused ``attn.qkv`` Linear (timm's ViTs and Swins) by a :class:`QKV`; the names replaced."""
    names = [
        name
        for name, m in backbone.named_modules()
        if name.endswith("attn.qkv") and isinstance(m, nn.Linear) and m.out_features == 3 * m.in_features
    ]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent), child, QKV(backbone.get_submodule(name)))
    return names


def _linear_part(weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: bool) -> nn.Linear:
    """A Linear layer holding a copy of ``weight`` (out, in) and ``bias``."""
    part = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        part.weight.copy_(weight)
        if bias is not None:
            part.bias.copy_(bias)
    part.requires_grad_(requires_grad)
    return part


class SplitAttention(nn.Module):
    """An ``nn.MultiheadAttention`` (same width for query, key and value) as four Linear layers ``q_proj``,
    ``k_proj``, ``v_proj`` and ``out_proj`` around scaled dot-product attention: the same function, with each
    projection a module of its own (peft adapts Linear layers, and the fused ``in_proj_weight`` is none)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        width, bias = mha.embed_dim, mha.in_proj_bias
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = slice(i * width, (i + 1) * width)
            part = _linear_part(
                mha.in_proj_weight[rows], None if bias is None else bias[rows], mha.in_proj_weight.requires_grad
            )
            self.add_module(name, part)
        self.out_proj = mha.out_proj
        self.num_heads, self.batch_first, self.dropout = mha.num_heads, mha.batch_first, mha.dropout

    def forward(self, query, key, value, need_weights: bool = False, attn_mask=None, **kwargs):
        """MultiheadAttention's call: ``(output, None)``; ``attn_mask`` additive (float) or True = masked out."""
        if need_weights or kwargs.get("key_padding_mask") is not None:
            raise NotImplementedError("SplitAttention returns no attention weights and takes no key_padding_mask")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        (batch, length, width), heads = query.shape, self.num_heads
        q, k, v = (
            proj(t).view(batch, t.shape[1], heads, width // heads).transpose(1, 2)
            for proj, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value))
        )
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MultiheadAttention's True = not allowed
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        if attn_mask is not None and attn_mask.dim() == 3:  # (batch * heads, L, S)
            attn_mask = attn_mask.view(batch, heads, *attn_mask.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return (out if self.batch_first else out.transpose(0, 1)), None


def split_attention(backbone: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` of equal query/key/value width (open_clip's ViTs) by a
    :class:`SplitAttention`; the names replaced."""
    names = [
        name
        for name, m in backbone.named_modules()
        if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim and m.in_proj_weight is not None
    ]
    for name in names:
        parent, _, child = name.rpartition(".")
        module = backbone.get_submodule(parent) if parent else backbone
        setattr(module, child, SplitAttention(backbone.get_submodule(name)))
    return names
