"""Multi-stage loss of ICONet (``docs/MODEL.md``, "Loss")::

    L = Σ_k  λ_sr · L1(sr_k, stage_targets[k])  +  λ_rec · L1(rec_k, rec_targets[k])

* Targets are magnitude images ``(B, 1, ·, ·)`` cut from the HR k-space by
  the acquisition (``Degraded.stage_targets`` and ``Degraded.rec_targets``),
  or complex (real, imag) targets for the phase-aware term.
* Complex-mode predictions ``(B, 2, ·, ·)`` (real, imag) are compared through
  their magnitude ``sqrt(re² + im² + eps)`` (the eps keeps the gradient finite
  at exact zeros).
* Per-slice normalisation: when the prediction carries a per-slice scale
  (:attr:`SROutput.norm_scale`, ``(B, 1, 1, 1)``) and ``normalize=True``,
  predictions and targets are both divided by it, i.e. the loss is computed in
  the model's normalised units as the spec prescribes; without a scale it is
  computed in the images' own units.
* Predictions are paired with targets by index when the lists line up, and
  otherwise by spatial size (e.g. a single-stage baseline at x4 has one SR
  output at the HR grid and one reconstruction at the LR grid).
* ``supervise="last_stage"`` keeps only ``sr_K`` and ``rec_K`` (ablation; also
  T2Net's ``0.8 · L1(SR) + 0.2 · L1(rec)`` with the default weights).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .models.common import SROutput, magnitude
from .physics.degradation import Degraded
from .physics.sense import complex_targets

__all__ = ["MultiStageLoss", "SUPERVISE_MODES", "complex_stage_targets"]

#: Valid values of ``MultiStageLoss(supervise=...)``.
SUPERVISE_MODES: Tuple[str, ...] = ("all_stages", "last_stage")


def _pair(
    preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], kind: str
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    if len(preds) == len(targets) and all(
        p.shape[-2:] == t.shape[-2:] for p, t in zip(preds, targets)
    ):
        return list(zip(preds, targets))
    pairs = []
    for k, pred in enumerate(preds):
        matches = [t for t in targets if t.shape[-2:] == pred.shape[-2:]]
        if len(matches) != 1:
            raise ValueError(
                f"{kind} prediction {k} of size {tuple(pred.shape[-2:])} matches "
                f"{len(matches)} targets (sizes {[tuple(t.shape[-2:]) for t in targets]}); "
                f"expected exactly one"
            )
        pairs.append((pred, matches[0]))
    return pairs


class MultiStageLoss(nn.Module):
    """Weighted sum of per-stage L1 losses on the SR outputs and the reconstruction priors.

    Args:
        lambda_sr: weight of every SR term [ours: 0.8].
        lambda_rec: weight of every reconstruction term [ours: 0.2].
        supervise: ``"all_stages"`` or ``"last_stage"``.
        normalize: use the prediction's per-slice scale when it has one (see module doc).
        eps: epsilon inside the complex magnitude's square root.

    Call as ``loss(output, sr_targets, rec_targets)``: an :class:`SROutput`
    (its ``sr_stages``, or ``[sr]``, its ``rec_stages`` and its ``norm_scale``)
    and the target lists, e.g. ``deg.stage_targets`` and ``deg.rec_targets``
    of a :class:`~iconet_fastmri.physics.degradation.Degraded`.

    Returns:
        ``(total, terms)``: the scalar loss and a dict of detached scalars for
        logging: ``"sr_k"`` and ``"rec_k"`` (unweighted L1 of stage k,
        1-based, supervised stages only), ``"sr"`` and ``"rec"`` (their
        weighted sums) and ``"total"``.
    """

    def __init__(
        self,
        lambda_sr: float = 0.8,
        lambda_rec: float = 0.2,
        supervise: str = "all_stages",
        normalize: bool = True,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if supervise not in SUPERVISE_MODES:
            raise ValueError(
                f"unknown supervise {supervise!r}; valid modes are {list(SUPERVISE_MODES)}"
            )
        if lambda_sr < 0 or lambda_rec < 0:
            raise ValueError(f"loss weights must be >= 0, got {lambda_sr}, {lambda_rec}")
        self.lambda_sr = float(lambda_sr)
        self.lambda_rec = float(lambda_rec)
        self.supervise = supervise
        self.normalize = normalize
        self.eps = eps

    def forward(
        self,
        output: SROutput,
        sr_targets: Sequence[torch.Tensor],
        rec_targets: Sequence[torch.Tensor],
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Compute the loss of ``output`` against the targets (see the class docstring)."""
        if not isinstance(output, SROutput):
            raise TypeError(f"loss(output, sr_targets, rec_targets) expects an SROutput, got {type(output).__name__}")
        sr_stages: Sequence[torch.Tensor] = output.sr_stages or [output.sr]
        if not sr_stages:
            raise ValueError("no SR predictions to supervise")
        norm_scale = output.norm_scale if self.normalize else None
        return self._compute(sr_stages, output.rec_stages, sr_targets, rec_targets, norm_scale)

    def _l1(
        self, pred: torch.Tensor, target: torch.Tensor, norm_scale: Optional[torch.Tensor]
    ) -> torch.Tensor:
        pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
        target = target.to(pred.dtype)
        if norm_scale is not None:
            scale = norm_scale.to(pred.dtype)
            pred, target = pred / scale, target / scale
        if pred.shape[1] != target.shape[1]:
            if target.shape[1] != 1:
                raise ValueError(
                    f"cannot compare a {pred.shape[1]}-channel prediction with a "
                    f"{target.shape[1]}-channel target"
                )
            pred = magnitude(pred, self.eps)
        return F.l1_loss(pred, target)

    def _compute(
        self,
        sr_stages: Sequence[torch.Tensor],
        rec_stages: Sequence[torch.Tensor],
        sr_targets: Sequence[torch.Tensor],
        rec_targets: Sequence[torch.Tensor],
        norm_scale: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        sr_pairs = _pair(sr_stages, sr_targets, "SR")
        rec_pairs = _pair(rec_stages, rec_targets, "reconstruction")
        first_sr = len(sr_pairs) - 1 if self.supervise == "last_stage" else 0
        first_rec = max(len(rec_pairs) - 1, 0) if self.supervise == "last_stage" else 0
        terms: Dict[str, torch.Tensor] = {}
        sr_total = sr_stages[0].new_zeros((), dtype=torch.float32)
        rec_total = sr_stages[0].new_zeros((), dtype=torch.float32)
        for k in range(first_sr, len(sr_pairs)):
            value = self._l1(*sr_pairs[k], norm_scale)
            terms[f"sr_{k + 1}"] = value.detach()
            sr_total = sr_total + self.lambda_sr * value
        for k in range(first_rec, len(rec_pairs)):
            value = self._l1(*rec_pairs[k], norm_scale)
            terms[f"rec_{k + 1}"] = value.detach()
            rec_total = rec_total + self.lambda_rec * value
        total = sr_total + rec_total
        terms["sr"] = sr_total.detach()
        terms["rec"] = rec_total.detach()
        terms["total"] = total.detach()
        return total, terms


def complex_stage_targets(hr_images: torch.Tensor, stages: Union[SROutput, Degraded],
                          maps: Optional[torch.Tensor] = None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(SR, prior) complex targets, as (real, imag) channels, on the grids of ``stages``.

    ``stages`` is a model's output (the grids of its stages) or the
    :class:`~iconet_fastmri.physics.degradation.Degraded` batch (the grids of its
    magnitude targets, which the loss pairs with a model's stages by size).
    Each target is ``F⁻¹ T F`` of the HR coil images on that grid, SENSE-combined with
    ``maps`` for multi-coil data (:func:`~iconet_fastmri.physics.sense.complex_targets`),
    computed in float32 outside autocast. Pass them to :class:`MultiStageLoss` for the
    phase-aware term.
    """
    if hr_images.shape[-1] == 0:
        raise ValueError("model.lambda_phase needs the HR coil images, which compact shards do not store; "
                         "prepare shards without --compact_scale, or set model.lambda_phase 0")
    if isinstance(stages, Degraded):
        sr_grids = [tuple(t.shape[-2:]) for t in stages.stage_targets]
        rec_grids = [tuple(t.shape[-2:]) for t in stages.rec_targets]
    else:
        sr_grids = [tuple(t.shape[-2:]) for t in (stages.sr_stages or [stages.sr])]
        rec_grids = [tuple(t.shape[-2:]) for t in stages.rec_stages]
    grids = list(dict.fromkeys(sr_grids + rec_grids))
    with torch.autocast(device_type=hr_images.device.type, enabled=False):
        images = dict(zip(grids, complex_targets(hr_images, grids, maps)))
    as_channels = lambda z: torch.cat([z.real, z.imag], dim=1)  # noqa: E731
    return [as_channels(images[g]) for g in sr_grids], [as_channels(images[g]) for g in rec_grids]
