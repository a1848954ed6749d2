"""k-space operators shared by the degradation, the models and the evaluation.

Everything here acts on centred k-space or complex images in the FFT
convention of :mod:`.fft` (centred, orthonormal, last two dimensions).

* **Scale rules.** :data:`SUPPORTED_SCALES`, :func:`check_scale`,
  :func:`lr_shape_for`: an HR grid ``(H, W)`` and a factor s give the LR grid
  ``(H/s, W/s)``; a grid s does not divide is an error.
* **Truncation** ``T`` from the HR to the LR k-space grid and its adjoint:
  :func:`crop_kspace` / :func:`pad_kspace`, and the same pair as an operator,
  :class:`KSpaceTruncation`. The intensity rule: truncation multiplies by
  ``sqrt(hw / HW)`` so that the LR image of a flat region keeps its value.
* :func:`sinc_upsample` (zero-padding interpolation) and :func:`rss` (coil
  combination; the magnitude for one coil). Data consistency goes through the
  SENSE operator ``A``: :func:`~.sense.sense_data_consistency`.
* :class:`PhaseEncodeOversampling`: the samples of a real scan whose phase encode
  covers a wider field of view than the model's grid.

Operators follow one small protocol, :class:`LinearOperator`: ``forward``
and ``adjoint``, each tested for ``<A x, y> == <x, Aᴴ y>`` with the shared
check ``tests/helpers/adjoint.py: assert_adjoint``. A new operator is a
subclass with those two methods and such a test.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from .fft import CHUNK_BYTES, fft2c, ifft2c

__all__ = [
    "SUPPORTED_SCALES",
    "check_scale",
    "lr_shape_for",
    "intensity_factor",
    "crop_kspace",
    "pad_kspace",
    "sinc_upsample",
    "rss",
    "LinearOperator",
    "KSpaceTruncation",
    "PhaseEncodeOversampling",
]

#: Scales the package supports: ICONet upsamples in x2 stages.
SUPPORTED_SCALES = (2, 4, 8)


def check_scale(scale: int) -> int:
    """Validate a super-resolution factor (2, 4 or 8)."""
    if isinstance(scale, bool) or int(scale) != scale or int(scale) not in SUPPORTED_SCALES:
        raise ValueError(
            f"unsupported scale {scale!r}: ICONet upsamples in x2 stages, so the scale must be "
            f"one of {SUPPORTED_SCALES}"
        )
    return int(scale)


def lr_shape_for(hr_shape: Sequence[int], scale: int) -> Tuple[int, int]:
    """LR grid ``(H/s, W/s)`` for an HR grid ``(H, W)``; a clear error if s does not divide it."""
    scale = check_scale(scale)
    h, w = int(hr_shape[-2]), int(hr_shape[-1])
    if h % scale or w % scale:
        raise ValueError(
            f"HR grid {h}x{w} is not divisible by the scale {scale}: choose an HR crop whose "
            f"height and width are multiples of {scale} (e.g. {h - h % scale}x{w - w % scale})"
        )
    return h // scale, w // scale


def _crop_start(full: int, part: int) -> int:
    # Keep the DC sample (index full // 2) at the DC position of the crop (part // 2).
    return full // 2 - part // 2


def intensity_factor(small: Tuple[int, int], large: Tuple[int, int]) -> float:
    """``sqrt(hw / HW)``: the factor of the intensity-preserving truncation from ``large`` to ``small``."""
    return math.sqrt((small[0] * small[1]) / (large[0] * large[1]))


def crop_kspace(kspace: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Intensity-preserving k-space truncation ``A``: centred crop times ``sqrt(hw / HW)``.

    Args:
        kspace: centred k-space ``(..., H, W)``.
        shape: target grid ``(h, w)``, at most ``(H, W)``.

    Returns:
        ``(..., h, w)``; ``ifft2c`` of it has the intensity of ``ifft2c(kspace)``.
    """
    big = (kspace.shape[-2], kspace.shape[-1])
    h, w = shape
    if h > big[0] or w > big[1]:
        raise ValueError(f"cannot crop k-space of size {big} to the larger size {(h, w)}")
    r0, c0 = _crop_start(big[0], h), _crop_start(big[1], w)
    return kspace[..., r0 : r0 + h, c0 : c0 + w] * intensity_factor((h, w), big)


def pad_kspace(kspace: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Adjoint ``Aᴴ`` of :func:`crop_kspace`: centred zero-padding times ``sqrt(hw / HW)``.

    ``<crop_kspace(x), y> == <x, pad_kspace(y)>`` holds exactly; note that
    ``crop_kspace(pad_kspace(y)) == (hw / HW) * y`` (``A Aᴴ = a² I``).
    """
    small = (kspace.shape[-2], kspace.shape[-1])
    H, W = shape
    if H < small[0] or W < small[1]:
        raise ValueError(f"cannot zero-pad k-space of size {small} to the smaller size {(H, W)}")
    out = kspace.new_zeros(*kspace.shape[:-2], H, W)
    r0, c0 = _crop_start(H, small[0]), _crop_start(W, small[1])
    out[..., r0 : r0 + small[0], c0 : c0 + small[1]] = kspace * intensity_factor(small, (H, W))
    return out


def sinc_upsample(image: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Intensity-preserving zero-padding ("sinc") interpolation of complex images to ``shape``."""
    small = (image.shape[-2], image.shape[-1])
    factor = 1.0 / intensity_factor(small, shape) ** 2
    return ifft2c(pad_kspace(fft2c(image), shape) * factor)


def rss(coil_images: torch.Tensor, dim: int = 1, keepdim: bool = True) -> torch.Tensor:
    """Root-sum-of-squares over coils (the magnitude for one coil)."""
    if (
        coil_images.is_complex()
        and coil_images.device.type == "cpu"
        and 0 < coil_images.shape[dim % coil_images.dim()] <= _RSS_MAX_LOOP
    ):
        return _rss_accumulate(coil_images, dim % coil_images.dim(), keepdim)
    if coil_images.is_complex() and coil_images.device.type != "cpu":
        # GPU: one reduction kernel over (coil, real/imag); the pow/sum/sum/sqrt chain
        # below makes four passes, three over the full coil data (HR 15-coil batches: ~100 MB).
        return _rss_norm(coil_images, dim % coil_images.dim(), keepdim)
    if coil_images.is_complex():
        power = torch.view_as_real(coil_images).pow(2).sum(-1)
    else:
        power = coil_images.pow(2)
    return power.sum(dim=dim, keepdim=keepdim).sqrt()


def _rss_norm(coil_images: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
    # The RSS as one 2-norm reduction over (coil, real/imag) of the real view.
    out = torch.linalg.vector_norm(torch.view_as_real(coil_images), dim=(dim, -1), keepdim=True)
    out = out.squeeze(-1)
    return out if keepdim else out.squeeze(dim)


#: Coil counts up to which the CPU RSS accumulates coil by coil.
_RSS_MAX_LOOP = 64


def _rss_accumulate(coil_images: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
    # CPU. Small inputs: square, reduce over coils first, then add the (real, imag)
    # pair on the coil-reduced data (the reduction over the size-2 axis is the slow
    # part of pow(2).sum(-1).sum(dim)). Large inputs: accumulate re^2 + im^2 coil by
    # coil with fused multiply-adds on strided views, with no full-size temporary
    # (a fresh large allocation is page-faulted in on first touch).
    real = torch.view_as_real(coil_images)
    if coil_images.numel() * coil_images.element_size() <= CHUNK_BYTES:
        power = real.square().sum(dim, keepdim=True)
        out = (power[..., 0] + power[..., 1]).sqrt_()
        return out if keepdim else out.squeeze(dim)
    acc: Optional[torch.Tensor] = None
    for c in range(coil_images.shape[dim]):
        part = real.select(dim, c)
        re, im = part[..., 0], part[..., 1]
        if acc is None:
            acc = torch.mul(re, re).addcmul_(im, im)
        else:
            acc = acc.addcmul_(re, re).addcmul_(im, im)
    assert acc is not None
    out = acc.sqrt_()
    return out.unsqueeze(dim) if keepdim else out


class LinearOperator:
    """A linear map with an adjoint: ``forward(x)`` is ``A x``, ``adjoint(y)`` is ``Aᴴ y``.

    Subclasses implement both; ``op(x)`` calls ``forward``. Every operator in
    this package has an adjointness test (``<A x, y> == <x, Aᴴ y>``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


class KSpaceTruncation(LinearOperator):
    """``T``: intensity-preserving truncation of centred k-space from the HR to the LR grid.

    ``forward`` is :func:`crop_kspace` to ``lr_shape``; ``adjoint`` is
    :func:`pad_kspace` back to ``hr_shape``. ``T Tᴴ = (hw / HW) I``.

    Args:
        hr_shape: the HR grid ``(H, W)``.
        lr_shape: the LR grid ``(h, w)``, at most ``(H, W)`` in each dimension.
    """

    def __init__(self, hr_shape: Sequence[int], lr_shape: Sequence[int]) -> None:
        self.hr_shape = (int(hr_shape[-2]), int(hr_shape[-1]))
        self.lr_shape = (int(lr_shape[-2]), int(lr_shape[-1]))
        if self.lr_shape[0] > self.hr_shape[0] or self.lr_shape[1] > self.hr_shape[1]:
            raise ValueError(f"LR grid {self.lr_shape} is larger than the HR grid {self.hr_shape}")

    @classmethod
    def for_scale(cls, hr_shape: Sequence[int], scale: int) -> "KSpaceTruncation":
        """The truncation of an HR grid by the factor ``scale`` (see :func:`lr_shape_for`)."""
        return cls(hr_shape, lr_shape_for(hr_shape, scale))

    def _check(self, x: torch.Tensor, shape: Tuple[int, int], what: str) -> None:
        if tuple(x.shape[-2:]) != shape:
            raise ValueError(f"{what} expects k-space on the grid {shape}, got {tuple(x.shape[-2:])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.hr_shape, "KSpaceTruncation.forward")
        return crop_kspace(x, self.lr_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.lr_shape, "KSpaceTruncation.adjoint")
        return pad_kspace(y, self.hr_shape)


class PhaseEncodeOversampling(LinearOperator):
    """``E = M · F_wide · P · F⁻¹``: the samples a scan with an oversampled phase encode takes of a model-grid image.

    A scan whose phase encode covers a wider field of view than the reconstruction
    samples k-space on an ``(h, w_k)`` grid (``w_k > w``; readout oversampling is
    cropped beforehand, exactly, as it is fully sampled). ``forward`` takes the
    model's LR k-space ``(..., h, w)``, pads its image with zeros to the wide field
    of view (``P``: the adjoint of the fastMRI centre crop, start ``(w_k - w) // 2``),
    transforms it back and keeps the acquired samples (``M``, broadcastable to
    ``(..., h, w_k)``); ``adjoint`` is ``F · Pᴴ · F_wide⁻¹ · M``. Data consistency
    through ``E`` (:func:`~.sense.sense_data_consistency` with ``encoding=``) is the
    hard (or soft) projection on the wide grid, keeping what lies outside the
    reconstructed field of view fixed (the caller subtracts its samples from the
    measurements).

    Args:
        mask: acquired samples on the wide grid, broadcastable to ``(..., h, w_k)``.
        grid: the model's LR grid ``(h, w)``.
    """

    def __init__(self, mask: torch.Tensor, grid: Sequence[int]) -> None:
        self.mask = mask
        self.grid = (int(grid[0]), int(grid[1]))
        self.wide = (int(mask.shape[-2]), int(mask.shape[-1]))
        if self.wide[0] != self.grid[0] or self.wide[1] < self.grid[1]:
            raise ValueError(f"a phase-encode oversampled grid {self.wide[0]}x{self.wide[1]} must have the model grid's "
                             f"{self.grid[0]} rows and at least its {self.grid[1]} columns")
        self.start = (self.wide[1] - self.grid[1]) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model-grid LR k-space ``(..., h, w)`` -> acquired samples ``(..., h, w_k)``."""
        image = ifft2c(x)
        wide = image.new_zeros(*image.shape[:-1], self.wide[1])
        wide[..., self.start:self.start + self.grid[1]] = image
        return fft2c(wide) * self.mask

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Samples ``(..., h, w_k)`` -> model-grid LR k-space ``(..., h, w)``."""
        image = ifft2c(y * self.mask)
        return fft2c(image[..., self.start:self.start + self.grid[1]].contiguous())
