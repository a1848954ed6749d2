"""The contract every model shares: :class:`SROutput`, :class:`SRModel` and their helpers.

A model takes an LR image ``(B, C, h, w)`` (``C = 1`` magnitude, ``C = 2``
real/imaginary channels of a complex image) and returns an :class:`SROutput`
in the input's intensity units. Subclassing :class:`SRModel` gives a model,
in one place for all of them:

* the input check (rank, channel count, complex measured k-space when needed);
* per-slice normalisation: the input (and the measured k-space) are divided
  by the slice's scale, :meth:`SRModel.run` works in those units, and every
  output is multiplied back; ``SROutput.norm_scale`` carries the scale so that
  the loss compares in normalised units. The scale is :func:`per_slice_scale`
  of the **whole slice's** input: computed from ``x`` when ``x`` is a whole
  slice, and passed in (``norm_scale=``) when ``x`` is a training patch cut
  from one (:mod:`~iconet_fastmri.models.patches`), so that a patch of
  background is not blown up to the amplitude of anatomy;
* magnitude outputs (1 channel) that are non-negative by construction: every
  returned stage is ``max(·, 0)`` of the network's estimate, in training as in
  inference, since every target and metric is a non-negative magnitude
  (complex outputs are left alone: their magnitude is non-negative anyway).
  The backward pass is the identity's (:func:`clamp_straight_through`): a plain
  clamp passes no gradient below 0, so background pixels that start negative
  stay at exactly 0 under a noisy target (ICONet lost 0.07 SSIM so in
  ``scripts/normalisation_study.py``), and ``|·|`` cost 0.26 dB on the demo
  (docs/REAL_DATA.md, "Normalisation");
* its constructor arguments (:attr:`SRModel.init_args`), which the Lightning
  module stores in checkpoints as ``{"class_path", "init_args"}`` so that a
  model can be rebuilt from a registered class without pickling it.

A model that is not an :class:`SRModel` may still be used if it returns an
:class:`SROutput`; with ``norm_scale=None`` the loss is computed in the
images' own units (the Lightning module adds no normalisation of its own).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..physics.operators import PhaseEncodeOversampling, check_scale

__all__ = [
    "SROutput",
    "SRModel",
    "per_slice_scale",
    "check_norm_scale",
    "clamp_straight_through",
    "channels_to_complex",
    "complex_to_channels",
    "upsample_bicubic",
    "magnitude",
    "check_in_chans",
]


@dataclass
class SROutput:
    """What every model returns.

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
    mag = x.pow(2).sum(dim=1, keepdim=True).sqrt()
    return mag.mean(dim=(1, 2, 3), keepdim=True) + eps


def clamp_straight_through(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` in the forward pass (exactly), the identity's gradient in the backward pass."""
    return x + (x.clamp_min(0) - x).detach()


def check_norm_scale(norm_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A given per-slice scale (:func:`per_slice_scale`, > 0 by its floor): ``(B, 1, 1, 1)`` for ``x``, detached.

    Only the shape is checked (a value check would synchronise the device on every step).
    """
    if tuple(norm_scale.shape) != (x.shape[0], 1, 1, 1):
        raise ValueError(f"norm_scale must be (B, 1, 1, 1) = {(x.shape[0], 1, 1, 1)}, got {tuple(norm_scale.shape)}")
    return norm_scale.detach().to(torch.promote_types(x.dtype, torch.float32))


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


def magnitude(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Magnitude ``(B, 1, H, W)`` of a 1-channel (returned as is) or 2-channel (re, im) image.

    ``eps`` inside the square root keeps the gradient finite at exact zeros;
    pass ``eps=0`` for metrics.
    """
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 2:
        raise ValueError(f"expected 1 (magnitude) or 2 (real, imag) channels, got {x.shape[1]}")
    return (x.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()


def check_in_chans(in_chans: int) -> int:
    """``in_chans`` must be 1 (magnitude) or 2 (real, imag)."""
    if in_chans not in (1, 2):
        raise ValueError(f"in_chans must be 1 (magnitude) or 2 (real, imag), got {in_chans}")
    return in_chans


class SRModel(nn.Module):
    """Base class of the package's models: checks, normalise -> :meth:`run` -> de-normalise.

    Subclasses call ``super().__init__(scale, in_chans, normalize, norm_eps)``
    (after which ``self.scale`` and ``self.in_chans`` are checked values) and
    implement :meth:`run`. A model that uses the measured k-space (data
    consistency) sets :attr:`uses_kspace` to ``True``.

    Args:
        scale: super-resolution factor (2, 4 or 8).
        in_chans: 1 (magnitude) or 2 (real, imag).
        normalize: divide the input by :func:`per_slice_scale` and multiply the
            outputs back (outputs stay in the input's intensity units).
        norm_eps: floor of the per-slice scale.
    """

    #: Whether :meth:`run` needs ``measured_kspace`` and ``mask``.
    uses_kspace: bool = False
    #: Whether 1-channel (magnitude) outputs are made non-negative; the interpolation
    #: baselines turn it off, to stay the literal interpolation the literature reports.
    nonnegative: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__init__
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:  # the most derived class records its arguments
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = {k: v for k, v in list(bound.arguments.items())[1:]}
                object.__setattr__(self, "_init_args", recorded)
            original(self, *args, **kw)

        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, scale: int, in_chans: int = 1, normalize: bool = True, norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.in_chans = check_in_chans(in_chans)
        self.normalize = normalize
        self.norm_eps = norm_eps

    @property
    def init_args(self) -> Dict[str, Any]:
        """The constructor arguments this model was built with (defaults filled in)."""
        return dict(self.__dict__.get("_init_args", {}))

    def check_inputs(
        self,
        x: torch.Tensor,
        measured_kspace: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        maps: Optional[torch.Tensor] = None,
        encoding: Optional[PhaseEncodeOversampling] = None,
    ) -> None:
        """Raise a clear ``ValueError`` for an input this model cannot take."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected an LR image of shape (B, {self.in_chans}, h, w), got {tuple(x.shape)}"
            )
        if not self.uses_kspace:
            return
        if measured_kspace is None or mask is None:
            raise ValueError(
                f"{type(self).__name__} uses the measured k-space: it needs measured_kspace "
                f"(B, C, h, w) complex and mask; got measured_kspace="
                f"{'None' if measured_kspace is None else 'set'}, mask={'None' if mask is None else 'set'}"
            )
        if not measured_kspace.is_complex():
            raise ValueError(
                "measured_kspace must be a native complex tensor (B, C, h, w), centred "
                "(e.g. Degraded.lr_observed)"
            )
        grid = tuple(x.shape[-2:])
        if encoding is not None and (encoding.grid != grid or tuple(measured_kspace.shape[-2:]) != encoding.wide):
            raise ValueError(
                f"a phase-encode oversampled measurement {tuple(measured_kspace.shape[-2:])} with an encoding from "
                f"{encoding.grid} to {encoding.wide} does not fit the LR input grid {grid}"
            )
        if encoding is None and tuple(measured_kspace.shape[-2:]) != grid:
            raise ValueError(
                f"measured_kspace grid {tuple(measured_kspace.shape[-2:])} does not match the "
                f"LR input grid {grid}"
            )
        coils = measured_kspace.shape[1]
        if maps is None and coils > 1:
            raise ValueError(
                f"measured_kspace has {coils} coils: multi-coil data consistency needs the coil "
                f"sensitivity maps (maps=(B, {coils}, h, w) complex, e.g. physics.sense.estimate_maps_rss)"
            )
        if maps is not None and (not maps.is_complex() or maps.dim() != 4 or maps.shape[:2] != measured_kspace.shape[:2]):
            raise ValueError(
                f"maps must be complex (B, C, h, w) matching measured_kspace {tuple(measured_kspace.shape)}, "
                f"got {tuple(maps.shape)} {maps.dtype}"
            )

    def run(
        self, x: torch.Tensor, measured_kspace: Optional[torch.Tensor], mask: Optional[torch.Tensor]
    ) -> SROutput:  # pragma: no cover - abstract
        """The network on normalised inputs; returns its outputs in the same units.

        Multi-coil data consistency also passes ``maps=`` (keyword), only when maps are given, and a
        phase-encode oversampled scan ``encoding=``, only then.
        """
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        measured_kspace: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        maps: Optional[torch.Tensor] = None,
        norm_scale: Optional[torch.Tensor] = None,
        encoding: Optional[PhaseEncodeOversampling] = None,
    ) -> SROutput:
        """Super-resolve an LR image.

        Args:
            x: LR input image ``(B, in_chans, h, w)`` (e.g. ``Degraded.lr_input``,
                or the real/imag channels of ``Degraded.lr_input_complex``).
            measured_kspace: centred measured LR k-space ``(B, C, h, w)`` complex
                (``Degraded.lr_observed``) in the units of ``x``; needed when
                :attr:`uses_kspace`, ignored otherwise.
            mask: sampling mask broadcastable to the measured k-space, 1 where acquired.
            maps: coil sensitivities ``(B, C, h, w)`` complex (``Σ_c |S_c|² = 1``),
                needed with multi-coil ``measured_kspace``; ``x`` is then the SENSE
                combination ``Σ_c conj(S_c) x_c`` of the coil images (2 channels).
            norm_scale: ``(B, 1, 1, 1)`` scale of the whole slices ``x`` was cut from
                (:func:`per_slice_scale` of their input); default: computed from ``x``,
                which must then be whole slices. Ignored when the model does not normalise.
            encoding: a real scan's oversampled phase encode
                (:class:`~iconet_fastmri.physics.operators.PhaseEncodeOversampling`);
                ``measured_kspace`` and ``mask`` are then on its wide grid.

        Returns:
            :class:`SROutput` in the input's intensity units; 1-channel outputs are >= 0.
        """
        self.check_inputs(x, measured_kspace, mask, maps if self.uses_kspace else None, encoding)
        if not self.uses_kspace:
            measured_kspace = mask = maps = encoding = None
        extra = {key: value for key, value in (("maps", maps), ("encoding", encoding)) if value is not None}
        if not self.normalize:
            return self._nonnegative(self.run(x, measured_kspace, mask, **extra))
        scale = per_slice_scale(x, self.norm_eps) if norm_scale is None else check_norm_scale(norm_scale, x)
        image = (x / scale).to(x.dtype)
        measured = None if measured_kspace is None else measured_kspace / scale
        out = self.run(image, measured, mask, **extra)
        sr_stages = [(s * scale).to(x.dtype) for s in out.sr_stages]
        if sr_stages and out.sr is out.sr_stages[-1]:
            sr = sr_stages[-1]
        else:
            sr = (out.sr * scale).to(x.dtype)
        rec_stages = [(r * scale).to(x.dtype) for r in out.rec_stages]
        return self._nonnegative(SROutput(sr=sr, sr_stages=sr_stages, rec_stages=rec_stages, norm_scale=scale))

    #: How :meth:`_nonnegative` makes a magnitude non-negative (see the module docstring).
    magnitude_of = staticmethod(clamp_straight_through)

    def _nonnegative(self, out: SROutput) -> SROutput:
        """Magnitude outputs through :attr:`magnitude_of`; complex ones as they are."""
        if self.in_chans != 1 or not self.nonnegative:
            return out
        f = self.magnitude_of
        sr_stages = [f(s) for s in out.sr_stages]
        sr = sr_stages[-1] if sr_stages and out.sr is out.sr_stages[-1] else f(out.sr)
        return SROutput(sr=sr, sr_stages=sr_stages, rec_stages=[f(r) for r in out.rec_stages], norm_scale=out.norm_scale)
