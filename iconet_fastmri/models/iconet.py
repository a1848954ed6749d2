"""ICONet: iterative collaboration of a reconstruction branch and an SR branch.

Follows ``docs/MODEL.md``. With ``K = log2(scale)`` stages (x2 each)::

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

Design decisions beyond the paper (all in ``docs/MODEL.md``):

* **Rec tail after the fusion.** A literal reading of the paper's description computes ``rec_k``
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
  :attr:`SROutput.norm_scale` to compare in normalised units.
* **Data consistency** acts in normalised units against ``measured / σ``;
  since DC is linear in (image, measured), this equals DC in input units.
  It goes through the SENSE model ``A = M · F · T · S``
  (:func:`~iconet_fastmri.physics.sense.sense_data_consistency`): with
  single-coil data ``S = 1``; with multi-coil data the input is the SENSE
  combination of the coil images and ``forward(..., maps=...)`` passes the
  coil maps (moved to each stage's grid).
* With ``use_rec_branch=False`` there is nothing to fuse: the fusion setting is
  ignored (no fusion layers are created), SR tails add to the bicubic
  upsampling of the previous image, and data consistency is not allowed.
"""

from __future__ import annotations

import math
from typing import List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..physics.operators import PhaseEncodeOversampling
from ..physics.sense import sense_data_consistency
from .blocks import BLOCK_TYPES, build_block
from .common import SRModel, SROutput, channels_to_complex, complex_to_channels, upsample_bicubic
from .fusion import FUSION_TYPES, build_fusion

__all__ = ["ICONet", "DC_MODES", "FeatureBranch"]

#: Valid values of ICONet's ``data_consistency`` argument.
DC_MODES: Tuple[str, ...] = ("none", "hard", "soft")


def _check_dc_mode(name: str, mode: str, in_chans: int) -> None:
    """A known DC mode, and complex input for any DC (k-space consistency needs the phase)."""
    if mode not in DC_MODES:
        raise ValueError(f"unknown {name} {mode!r}; valid modes are {list(DC_MODES)}")
    if mode != "none" and in_chans != 2:
        raise ValueError(
            f"{name}={mode!r} needs complex mode (in_chans=2): "
            f"k-space consistency is undefined for magnitude images (in_chans={in_chans})"
        )


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


class ICONet(SRModel):
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
            stage); k-space DC of the reconstruction prior, complex mode only
            (multi-coil: through the coil maps given to ``forward``).
        data_consistency_sr: ``"none"``, ``"hard"`` or ``"soft"`` (one learned λ):
            DC of the final SR output. Its k-space, truncated to the LR grid,
            is made to agree with the acquired samples where the mask is 1;
            through the truncation's adjoint only those frequencies change and
            the SR branch's high frequencies are left alone. Complex mode only.
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
        fusion: Literal["adaptive", "concat", "none"] = "adaptive",
        block: Literal["rscfl", "resblock"] = "rscfl",
        data_consistency: Literal["none", "hard", "soft"] = "none",
        data_consistency_sr: Literal["none", "hard", "soft"] = "none",
        use_rec_branch: bool = True,
        checkpoint_blocks: bool = False,
        num_heads: int = 4,
        ffn_expansion: float = 2.0,
        fusion_gate_kernel: int = 3,
        dc_lambda_init: float = 1.0,
        normalize: bool = True,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__(scale, in_chans, normalize, norm_eps)
        if fusion not in FUSION_TYPES:
            raise ValueError(f"unknown fusion {fusion!r}; valid fusions are {list(FUSION_TYPES)}")
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown block {block!r}; valid blocks are {list(BLOCK_TYPES)}")
        for name, mode in (("data_consistency", data_consistency), ("data_consistency_sr", data_consistency_sr)):
            _check_dc_mode(name, mode, in_chans)
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

        self.width = width
        self.num_stages = int(round(math.log2(self.scale)))
        self.block_type = block
        self.use_rec_branch = use_rec_branch
        self.fusion_type = fusion if use_rec_branch else "none"
        self.dc_mode = data_consistency
        self.dc_sr_mode = data_consistency_sr

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
        if data_consistency_sr == "soft":
            self.dc_sr_lambda_raw = nn.Parameter(torch.tensor(_inverse_softplus(dc_lambda_init)))

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

    @property
    def uses_kspace(self) -> bool:  # type: ignore[override]
        """Data consistency needs the measured k-space and the mask."""
        return self.dc_mode != "none" or self.dc_sr_mode != "none"

    def _apply_dc(
        self, rec: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, stage: int,
        maps: Optional[torch.Tensor] = None, encoding: Optional[PhaseEncodeOversampling] = None,
    ) -> torch.Tensor:
        # rec: (B, 2, H', W') real/imag in normalised units; measured: (B, C, h, w) complex.
        image = channels_to_complex(rec)
        lam = None
        if self.dc_mode == "soft":
            lam = F.softplus(self.dc_lambda_raw[stage]).to(image.real.dtype)
        corrected = sense_data_consistency(image, measured.to(image.dtype), mask, maps, lam, encoding)
        return complex_to_channels(corrected).to(rec.dtype)

    def _apply_dc_sr(
        self, sr: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, maps: Optional[torch.Tensor] = None,
        encoding: Optional[PhaseEncodeOversampling] = None,
    ) -> torch.Tensor:
        # DC of the HR estimate: through the truncation T only the measured LR frequencies change.
        image = channels_to_complex(sr)
        lam = F.softplus(self.dc_sr_lambda_raw).to(image.real.dtype) if self.dc_sr_mode == "soft" else None
        corrected = sense_data_consistency(image, measured.to(image.dtype), mask, maps, lam, encoding)
        return complex_to_channels(corrected).to(sr.dtype)

    def run(
        self,
        image: torch.Tensor,
        measured: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        maps: Optional[torch.Tensor] = None,
        encoding: Optional[PhaseEncodeOversampling] = None,
    ) -> SROutput:
        """The stages on a normalised LR image (see :meth:`SRModel.forward` for the arguments)."""
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
                    assert measured is not None and mask is not None  # checked by forward
                    rec = self._apply_dc(rec, measured, mask, k, maps, encoding)
                rec_stages.append(rec)
                base = rec
            else:
                base = previous
            feats = self.upsamplers[k](sr_feats)
            sr = self.sr_tails[k](feats) + upsample_bicubic(base)
            sr_stages.append(sr)
            previous = sr
        if self.dc_sr_mode != "none":
            assert measured is not None and mask is not None  # checked by forward
            sr_stages[-1] = self._apply_dc_sr(sr_stages[-1], measured, mask, maps, encoding)
        return SROutput(sr=sr_stages[-1], sr_stages=sr_stages, rec_stages=rec_stages)
