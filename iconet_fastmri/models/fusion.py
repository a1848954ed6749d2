"""SR-Rec fusion: exchange information between SR features ``S`` and reconstruction features ``R``.

Three variants (``docs/MODEL.md``, "SR-Rec fusion"), all mapping
``(S, R) -> (S', R')`` with shapes ``(B, C, H, W)``:

* ``"adaptive"`` (default): gated, in both directions::

      g  = conv1x1(cat(S, R))
      α  = sigmoid(conv_α(g)),  β = sigmoid(conv_β(g))
      S' = S + α ⊙ conv1x1(R)
      R' = R + β ⊙ conv1x1(S)

* ``"concat"``: the same exchange without gates,
  ``S' = S + conv1x1(cat(S, R))`` and ``R' = R + conv1x1(cat(R, S))``.
* ``"none"``: identity, no parameters.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

__all__ = ["AdaptiveFusion", "ConcatFusion", "NoFusion", "FUSION_TYPES", "build_fusion"]

#: Valid values of ICONet's ``fusion`` argument.
FUSION_TYPES: Tuple[str, ...] = ("adaptive", "concat", "none")


class AdaptiveFusion(nn.Module):
    """Gated two-way SR-Rec fusion.

    Args:
        channels: feature width ``C``.
        gate_kernel: kernel size of the gate convolutions ``conv_α``, ``conv_β``
            (odd; 3 gives the gates a little spatial context) [ours].
    """

    def __init__(self, channels: int, gate_kernel: int = 3) -> None:
        super().__init__()
        if gate_kernel < 1 or gate_kernel % 2 == 0:
            raise ValueError(f"gate_kernel must be a positive odd integer, got {gate_kernel}")
        pad = gate_kernel // 2
        self.joint = nn.Conv2d(2 * channels, channels, 1)
        self.gate_sr = nn.Conv2d(channels, channels, gate_kernel, padding=pad)
        self.gate_rec = nn.Conv2d(channels, channels, gate_kernel, padding=pad)
        self.rec_to_sr = nn.Conv2d(channels, channels, 1)
        self.sr_to_rec = nn.Conv2d(channels, channels, 1)

    def forward(
        self, sr_feats: torch.Tensor, rec_feats: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``S`` and ``R``, both ``(B, C, H, W)``; returns ``(S', R')``."""
        joint = self.joint(torch.cat([sr_feats, rec_feats], dim=1))
        alpha = torch.sigmoid(self.gate_sr(joint))
        beta = torch.sigmoid(self.gate_rec(joint))
        fused_sr = sr_feats + alpha * self.rec_to_sr(rec_feats)
        fused_rec = rec_feats + beta * self.sr_to_rec(sr_feats)
        return fused_sr, fused_rec


class ConcatFusion(nn.Module):
    """Ungated two-way fusion by concatenation and a 1x1 conv per direction.

    Args:
        channels: feature width ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.into_sr = nn.Conv2d(2 * channels, channels, 1)
        self.into_rec = nn.Conv2d(2 * channels, channels, 1)

    def forward(
        self, sr_feats: torch.Tensor, rec_feats: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``S`` and ``R``, both ``(B, C, H, W)``; returns ``(S', R')``."""
        fused_sr = sr_feats + self.into_sr(torch.cat([sr_feats, rec_feats], dim=1))
        fused_rec = rec_feats + self.into_rec(torch.cat([rec_feats, sr_feats], dim=1))
        return fused_sr, fused_rec


class NoFusion(nn.Module):
    """No exchange between the branches (ablation); has no parameters."""

    def forward(
        self, sr_feats: torch.Tensor, rec_feats: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(S, R)`` unchanged."""
        return sr_feats, rec_feats


def build_fusion(name: str, channels: int, gate_kernel: int = 3) -> nn.Module:
    """Build an SR-Rec fusion module by name.

    Args:
        name: one of :data:`FUSION_TYPES`.
        channels: feature width ``C``.
        gate_kernel: gate kernel size of the adaptive fusion.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name == "adaptive":
        return AdaptiveFusion(channels, gate_kernel=gate_kernel)
    if name == "concat":
        return ConcatFusion(channels)
    if name == "none":
        return NoFusion()
    raise ValueError(f"unknown fusion {name!r}; valid fusions are {list(FUSION_TYPES)}")
