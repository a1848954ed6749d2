"""Building blocks of ICONet: the RSCFL block and its parts, and a plain residual block.

All blocks map ``(B, C, H, W) -> (B, C, H, W)`` for any ``H, W`` (odd and
non-square included) and cost time linear in the number of pixels ``H * W``:
there is no quadratic (pixel x pixel) attention anywhere.

Mixed precision: the numerically delicate reductions (the LayerNorm
statistics, the L2 normalisation of queries and keys, the channel-attention
logits and softmax) are computed in float32 inside the block, also under
``torch.autocast(..., dtype=torch.bfloat16)``; the result is cast back to the
dtype of the incoming activations.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LayerNorm2d",
    "LargeKernelAttention",
    "SpatialAttention",
    "ChannelAttention",
    "GatedDConvFFN",
    "RSCFL",
    "ResBlock",
    "BLOCK_TYPES",
    "build_block",
]


def _float32_or_wider(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64; bf16 / fp16 / fp32 compute in fp32.
    return torch.promote_types(dtype, torch.float32)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an image tensor.

    Every pixel is normalised over its ``C`` channels (zero mean, unit
    variance), then scaled and shifted per channel. Statistics are computed
    in float32 (or float64 for double input) also under autocast.

    Args:
        channels: number of channels ``C``.
        eps: variance floor.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(B, C, H, W)``; returns the same shape and dtype."""
        compute = _float32_or_wider(x.dtype)
        x32 = x.to(compute)
        mean = x32.mean(dim=1, keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=1, keepdim=True)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.to(compute).view(1, -1, 1, 1) + self.bias.to(compute).view(1, -1, 1, 1)
        return y.to(x.dtype)


class LargeKernelAttention(nn.Module):
    """Large-kernel attention: a decomposed large receptive field that gates its input.

    ``attn = pw(dw_dilated7x7_d3(dw5x5(x)))`` and the output is ``x * attn``.
    The effective receptive field is 23 x 23 at a cost linear in pixels.

    Args:
        channels: number of channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.depthwise_dilated = nn.Conv2d(
            channels, channels, 7, padding=9, dilation=3, groups=channels
        )
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        attn = self.pointwise(self.depthwise_dilated(self.depthwise(x)))
        return x * attn


class SpatialAttention(nn.Module):
    """Spatial feature learning: 1x1 projection, GELU, large-kernel attention, 1x1 projection.

    Args:
        channels: number of channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.lka = LargeKernelAttention(channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        return self.proj_out(self.lka(F.gelu(self.proj_in(x))))


class ChannelAttention(nn.Module):
    """Channel ("transposed") multi-head self-attention.

    Queries, keys and values come from a 1x1 conv followed by a depthwise 3x3
    conv. For each of ``num_heads`` heads, with ``d = C / num_heads`` channels,
    the ``d x d`` attention ``softmax(τ · q̂ k̂ᵀ)`` is computed from queries and
    keys L2-normalised across all ``H * W`` pixels, with a learned temperature
    ``τ`` per head. Cost: ``O(C² / num_heads · H · W)``, linear in pixels.

    The normalisation, the logits and the softmax run in float32 even under
    autocast; the attention-weighted sum of values runs in the values' dtype.

    Args:
        channels: number of channels ``C``.
        num_heads: number of heads; must divide ``channels``.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must be >= 1 and divide the width {channels}"
            )
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.qkv_dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        heads = self.num_heads
        q = q.reshape(b, heads, c // heads, h * w)
        k = k.reshape(b, heads, c // heads, h * w)
        v = v.reshape(b, heads, c // heads, h * w)
        compute = _float32_or_wider(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q32 = F.normalize(q.to(compute), dim=-1)
            k32 = F.normalize(k.to(compute), dim=-1)
            logits = torch.matmul(q32, k32.transpose(-2, -1)) * self.temperature.to(compute)
            attn = torch.softmax(logits, dim=-1)
        out = torch.matmul(attn.to(v.dtype), v)  # (B, heads, d, H*W)
        return self.proj_out(out.reshape(b, c, h, w))


class GatedDConvFFN(nn.Module):
    """Gated depthwise-conv feed-forward network.

    ``x -> 1x1 (C -> 2E) -> depthwise 3x3 -> split (a, g) -> GELU(a) * g -> 1x1 (E -> C)``
    with hidden width ``E = round(C * expansion)``.

    Args:
        channels: number of channels ``C``.
        expansion: hidden-width factor.
    """

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * expansion)))
        self.proj_in = nn.Conv2d(channels, 2 * hidden, 1)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.proj_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        value, gate = self.depthwise(self.proj_in(x)).chunk(2, dim=1)
        return self.proj_out(F.gelu(value) * gate)


class RSCFL(nn.Module):
    """Residual spatial-channel feature learning block.

    ::

        y = x
        y = y + SpatialAttention(LN(y))     large-kernel attention
        y = y + ChannelAttention(LN(y))     transposed (C x C) attention
        y = y + GatedDConvFFN(LN(y))
        out = x + conv3x3(y)                outer residual

    Args:
        channels: feature width ``C``.
        num_heads: heads of the channel attention (must divide ``C``).
        ffn_expansion: hidden-width factor of the feed-forward network.
    """

    def __init__(self, channels: int, num_heads: int = 4, ffn_expansion: float = 2.0) -> None:
        super().__init__()
        self.norm_spatial = LayerNorm2d(channels)
        self.spatial = SpatialAttention(channels)
        self.norm_channel = LayerNorm2d(channels)
        self.channel = ChannelAttention(channels, num_heads)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = GatedDConvFFN(channels, ffn_expansion)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        y = x + self.spatial(self.norm_spatial(x))
        y = y + self.channel(self.norm_channel(y))
        y = y + self.ffn(self.norm_ffn(y))
        return x + self.conv(y)


class ResBlock(nn.Module):
    """Plain residual conv block (EDSR style, no normalisation): ``x + conv(ReLU(conv(x)))``.

    Used for the "RSCFL replaced by plain residual conv blocks" ablation and by
    the T2Net-like baseline.

    Args:
        channels: feature width ``C``.
        res_scale: multiplier of the residual branch.
    """

    def __init__(self, channels: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


#: Valid values of ICONet's ``block`` argument.
BLOCK_TYPES: Tuple[str, ...] = ("rscfl", "resblock")


def build_block(name: str, channels: int, num_heads: int, ffn_expansion: float) -> nn.Module:
    """Build one feature-learning block by name.

    Args:
        name: ``"rscfl"`` or ``"resblock"``.
        channels: feature width.
        num_heads: channel-attention heads (RSCFL only).
        ffn_expansion: feed-forward expansion (RSCFL only).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name == "rscfl":
        return RSCFL(channels, num_heads=num_heads, ffn_expansion=ffn_expansion)
    if name == "resblock":
        return ResBlock(channels)
    raise ValueError(f"unknown block {name!r}; valid blocks are {list(BLOCK_TYPES)}")
