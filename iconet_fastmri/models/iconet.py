"""ICONet: iterative collaboration of a reconstruction branch and an SR branch.

Follows ``docs/ICONET_SPEC.md``. With ``K = log2(scale)`` stages (x2 each)::

    x0 = lr_input / σ                         per-slice scale σ (normalize=True)
    F0 = head(x0)                             conv3x3, in_chans -> width
    for k = 1..K:
        R_k = RecBranch_k(F_{k-1})            blocks_per_stage blocks
        S_k = SRBranch_k(F_{k-1})             blocks_per_stage blocks
        S_k, R_k = Fusion_k(S_k, R_k)         SR-Rec fusion, both directions
        rec_k = rec_tail_k(R_k) + x_{k-1}     prior at the stage's input grid
        rec_k = DC(rec_k)                     optional (complex mode only)
        F_k = Up_k(S_k)                       conv3x3 -> PixelShuffle(2)
        sr_k = sr_tail_k(F_k) + bicubic×2(rec_k)
        x_k = sr_k
    outputs (times σ): sr = sr_K, sr_stages = [sr_1..sr_K], rec_stages = [rec_1..rec_K]

Design decisions beyond the spec (all documented in the report):

* **Rec tail after the fusion.** The spec's pseudo-code computes ``rec_k``
  from ``R_k`` *before* the fusion; the fused ``R_k'`` is then never used
  (the next stage starts from ``F_k = Up(S_k)``), which would leave the
  ``S -> R`` half of the fusion without gradient (an unused-parameter error
  under DDP). We compute ``rec_k`` from the fused ``R_k'``, so both directions
  of the fusion shape an output: ``R_k'`` through ``rec_k`` (and, via the
  residual ``bicubic×2(rec_k)``, the SR output too) and ``S_k'`` through ``F_k``.
* **Prior upsampling** for the SR residual is bicubic (``align_corners=False``),
  applied channel-wise (real and imaginary parts in complex mode).
* **Normalisation.** ``σ = mean over pixels of the channel-RSS |x| + eps``
  (the magnitude in both modes), detached; the input (and the measured
  k-space for DC) is divided by σ and every output multiplied back, so outputs
  are in the input's intensity units. The multi-stage loss uses
  :attr:`IconetOutput.norm_scale` to compare in normalised units.
* **Data consistency** acts in normalised units against ``measured / σ``;
  since DC is linear in (image, measured), this equals DC in input units.
* With ``use_rec_branch=False`` there is nothing to fuse: the fusion setting is
  ignored (no fusion layers are created), SR tails add to the bicubic
  upsampling of the previous image, and data consistency is not allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..physics.operators import check_scale, data_consistency
from .blocks import BLOCK_TYPES, build_block
from .fusion import FUSION_TYPES, build_fusion

__all__ = [
    "IconetOutput",
    "ICONet",
    "DC_MODES",
    "per_slice_scale",
    "channels_to_complex",
    "complex_to_channels",
    "upsample_bicubic",
]

#: Valid values of ICONet's ``data_consistency`` argument.
DC_MODES: Tuple[str, ...] = ("none", "hard", "soft")


@dataclass
class IconetOutput:
    """What ICONet (and every baseline) returns.

    Attributes:
        sr: final HR estimate ``(B, C, s·h, s·w)``; ``C`` is the input's channel
            count (1 magnitude, 2 real/imag).
        sr_stages: SR estimate of every stage, stage k at ``(B, C, 2^k·h, 2^k·w)``;
            the last one is ``sr``.
        rec_stages: reconstruction prior of every stage at that stage's input
            grid, stage k at ``(B, C, 2^(k-1)·h, 2^(k-1)·w)``; empty without a
            reconstruction branch.
        norm_scale: the per-slice intensity scale ``(B, 1, 1, 1)`` the model
            divided its input by (``None`` when it did not normalise); the loss
            uses it to compare in normalised units.
    """

    sr: torch.Tensor
    sr_stages: List[torch.Tensor] = field(default_factory=list)
    rec_stages: List[torch.Tensor] = field(default_factory=list)
    norm_scale: Optional[torch.Tensor] = None


def per_slice_scale(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-slice intensity scale: mean over pixels of the channel-RSS magnitude, plus ``eps``.

    Args:
        x: images ``(B, C, H, W)``, ``C = 1`` (magnitude) or ``2`` (real, imag).
        eps: floor that keeps an all-zero slice finite.

    Returns:
        ``(B, 1, 1, 1)``, detached, in float32 (float64 for double input).
    """
    x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    magnitude = x.pow(2).sum(dim=1, keepdim=True).sqrt()
    return magnitude.mean(dim=(1, 2, 3), keepdim=True) + eps


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)`` real/imag channels -> ``(B, 1, H, W)`` complex (complex64 or complex128)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return torch.complex(x[:, 0:1], x[:, 1:2])


def complex_to_channels(z: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` complex -> ``(B, 2, H, W)`` real/imag channels."""
    return torch.view_as_real(z).squeeze(1).permute(0, 3, 1, 2)


def upsample_bicubic(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Bicubic upsampling ``(B, C, H, W) -> (B, C, f·H, f·W)`` (``align_corners=False``)."""
    return F.interpolate(x, scale_factor=float(factor), mode="bicubic", align_corners=False)


def _inverse_softplus(value: float) -> float:
    # softplus(raw) == value for value > 0
    return value + math.log(-math.expm1(-value))


class FeatureBranch(nn.Module):
    """A chain of feature-learning blocks ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        blocks: the blocks, applied in order.
        checkpoint_blocks: recompute each block in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) while training.
    """

    def __init__(self, blocks: List[nn.Module], checkpoint_blocks: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.checkpoint_blocks = checkpoint_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks to ``x`` of shape ``(B, C, H, W)``."""
        use_checkpoint = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class ICONet(nn.Module):
    """ICONet for joint MRI reconstruction and super-resolution.

    Args:
        scale: super-resolution factor (2, 4 or 8): ``log2(scale)`` x2 stages.
        in_chans: 1 for magnitude images, 2 for complex images as (real, imag)
            channels; outputs have the same channel count.
        width: feature width ``C`` [ours: 64].
        blocks_per_stage: blocks per branch per stage ``N`` [ours: 4].
        fusion: SR-Rec fusion, ``"adaptive"``, ``"concat"`` or ``"none"``.
        block: ``"rscfl"`` or ``"resblock"`` (plain residual conv blocks, ablation).
        data_consistency: ``"none"``, ``"hard"`` or ``"soft"`` (learned λ per
            stage); k-space DC of the reconstruction prior, complex mode only.
        use_rec_branch: ``False`` removes the reconstruction branch (ablation).
        checkpoint_blocks: gradient-checkpoint every block while training.
        num_heads: heads of the RSCFL channel attention [ours: 4].
        ffn_expansion: hidden-width factor of the RSCFL feed-forward [ours: 2.0].
        fusion_gate_kernel: kernel of the adaptive-fusion gate convs [ours: 3].
        dc_lambda_init: initial λ of soft DC [ours: 1.0, i.e. weight 1/2].
        normalize: divide the input by a per-slice scale and multiply the
            outputs back (outputs stay in the input's intensity units).
        norm_eps: floor of the per-slice scale.

    Raises:
        ValueError: unknown ``fusion``, ``block`` or ``data_consistency`` names;
            data consistency in magnitude mode or without the reconstruction
            branch; a ``width`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        scale: int = 2,
        in_chans: int = 1,
        width: int = 64,
        blocks_per_stage: int = 4,
        fusion: str = "adaptive",
        block: str = "rscfl",
        data_consistency: str = "none",
        use_rec_branch: bool = True,
        checkpoint_blocks: bool = False,
        num_heads: int = 4,
        ffn_expansion: float = 2.0,
        fusion_gate_kernel: int = 3,
        dc_lambda_init: float = 1.0,
        normalize: bool = True,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if in_chans not in (1, 2):
            raise ValueError(f"in_chans must be 1 (magnitude) or 2 (real, imag), got {in_chans}")
        if fusion not in FUSION_TYPES:
            raise ValueError(f"unknown fusion {fusion!r}; valid fusions are {list(FUSION_TYPES)}")
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown block {block!r}; valid blocks are {list(BLOCK_TYPES)}")
        if data_consistency not in DC_MODES:
            raise ValueError(
                f"unknown data_consistency {data_consistency!r}; valid modes are {list(DC_MODES)}"
            )
        if data_consistency != "none" and in_chans != 2:
            raise ValueError(
                f"data_consistency={data_consistency!r} needs complex mode (in_chans=2): "
                f"k-space consistency is undefined for magnitude images (in_chans={in_chans})"
            )
        if data_consistency != "none" and not use_rec_branch:
            raise ValueError(
                f"data_consistency={data_consistency!r} acts on the reconstruction prior and "
                f"needs use_rec_branch=True"
            )
        if width < 1 or blocks_per_stage < 1:
            raise ValueError(
                f"width and blocks_per_stage must be >= 1, got {width} and {blocks_per_stage}"
            )
        if dc_lambda_init <= 0:
            raise ValueError(f"dc_lambda_init must be > 0, got {dc_lambda_init}")

        self.in_chans = in_chans
        self.width = width
        self.num_stages = int(round(math.log2(self.scale)))
        self.block_type = block
        self.use_rec_branch = use_rec_branch
        self.fusion_type = fusion if use_rec_branch else "none"
        self.dc_mode = data_consistency
        self.normalize = normalize
        self.norm_eps = norm_eps

        def branch() -> FeatureBranch:
            blocks = [
                build_block(block, width, num_heads, ffn_expansion) for _ in range(blocks_per_stage)
            ]
            return FeatureBranch(blocks, checkpoint_blocks)

        stages = range(self.num_stages)
        self.head = nn.Conv2d(in_chans, width, 3, padding=1)
        self.sr_branches = nn.ModuleList([branch() for _ in stages])
        self.upsamplers = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2))
                for _ in stages
            ]
        )
        self.sr_tails = nn.ModuleList([nn.Conv2d(width, in_chans, 3, padding=1) for _ in stages])
        if use_rec_branch:
            self.rec_branches = nn.ModuleList([branch() for _ in stages])
            self.rec_tails = nn.ModuleList(
                [nn.Conv2d(width, in_chans, 3, padding=1) for _ in stages]
            )
            self.fusions = nn.ModuleList(
                [build_fusion(self.fusion_type, width, fusion_gate_kernel) for _ in stages]
            )
        if data_consistency == "soft":
            raw = _inverse_softplus(dc_lambda_init)
            self.dc_lambda_raw = nn.Parameter(torch.full((self.num_stages,), raw))

    @property
    def checkpoint_blocks(self) -> bool:
        """Whether the blocks are gradient-checkpointed while training."""
        return bool(self.sr_branches[0].checkpoint_blocks)

    @checkpoint_blocks.setter
    def checkpoint_blocks(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, FeatureBranch):
                module.checkpoint_blocks = bool(value)

    def dc_lambdas(self) -> Optional[torch.Tensor]:
        """The positive soft-DC weights λ, one per stage ``(K,)``; ``None`` unless soft DC."""
        if self.dc_mode != "soft":
            return None
        return F.softplus(self.dc_lambda_raw)

    def _check_inputs(
        self,
        x: torch.Tensor,
        measured_kspace: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
    ) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected an LR image of shape (B, {self.in_chans}, h, w), got {tuple(x.shape)}"
            )
        if self.dc_mode == "none":
            return
        if measured_kspace is None or mask is None:
            raise ValueError(
                f"data_consistency={self.dc_mode!r} needs measured_kspace (B, 1, h, w) complex "
                f"and mask; got measured_kspace={'None' if measured_kspace is None else 'set'}, "
                f"mask={'None' if mask is None else 'set'}"
            )
        if not measured_kspace.is_complex():
            raise ValueError(
                "measured_kspace must be a native complex tensor (B, 1, h, w), centred "
                "(e.g. Degraded.lr_observed)"
            )
        if measured_kspace.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"measured_kspace grid {tuple(measured_kspace.shape[-2:])} does not match the "
                f"LR input grid {tuple(x.shape[-2:])}"
            )

    def _apply_dc(
        self, rec: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, stage: int
    ) -> torch.Tensor:
        # rec: (B, 2, H', W') real/imag in normalised units; measured: (B, 1, h, w) complex.
        image = channels_to_complex(rec)
        lam = None
        if self.dc_mode == "soft":
            lam = F.softplus(self.dc_lambda_raw[stage]).to(image.real.dtype)
        corrected = data_consistency(image, measured.to(image.dtype), mask, lam)
        return complex_to_channels(corrected).to(rec.dtype)

    def forward(
        self,
        x: torch.Tensor,
        measured_kspace: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> IconetOutput:
        """Super-resolve an LR image.

        Args:
            x: LR input image ``(B, in_chans, h, w)`` (e.g. ``Degraded.lr_input``,
                or the real/imag channels of ``Degraded.lr_input_complex``).
            measured_kspace: centred measured LR k-space ``(B, 1, h, w)`` complex
                (``Degraded.lr_observed``), in the same intensity units as
                ``x``; required with data consistency.
            mask: sampling mask broadcastable to ``(B, 1, h, w)``, 1 where
                acquired; required with data consistency.

        Returns:
            :class:`IconetOutput` in the input's intensity units.
        """
        self._check_inputs(x, measured_kspace, mask)
        scale: Optional[torch.Tensor] = None
        image = x
        measured = measured_kspace
        if self.normalize:
            scale = per_slice_scale(x, self.norm_eps)
            image = (x / scale).to(x.dtype)
            if measured is not None:
                measured = measured / scale

        feats = self.head(image)
        previous = image
        sr_stages: List[torch.Tensor] = []
        rec_stages: List[torch.Tensor] = []
        for k in range(self.num_stages):
            sr_feats = self.sr_branches[k](feats)
            if self.use_rec_branch:
                rec_feats = self.rec_branches[k](feats)
                sr_feats, rec_feats = self.fusions[k](sr_feats, rec_feats)
                rec = self.rec_tails[k](rec_feats) + previous
                if self.dc_mode != "none":
                    assert measured is not None and mask is not None  # checked above
                    rec = self._apply_dc(rec, measured, mask, k)
                rec_stages.append(rec)
                base = rec
            else:
                base = previous
            feats = self.upsamplers[k](sr_feats)
            sr = self.sr_tails[k](feats) + upsample_bicubic(base)
            sr_stages.append(sr)
            previous = sr

        if scale is not None:
            sr_stages = [(s * scale).to(x.dtype) for s in sr_stages]
            rec_stages = [(r * scale).to(x.dtype) for r in rec_stages]
        return IconetOutput(
            sr=sr_stages[-1], sr_stages=sr_stages, rec_stages=rec_stages, norm_scale=scale
        )
