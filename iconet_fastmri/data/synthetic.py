"""Synthetic, anatomy-like MRI volumes written in the exact fastMRI HDF5 layout.

The demo, the tests and the CI need raw k-space that goes through the same
code path as the real fastMRI knee/brain files (``fastmri.data.SliceDataset``,
our transforms, the masks) without downloading hundreds of gigabytes. This
module simulates such files procedurally with numpy/scipy only.

File layout (one HDF5 file per volume, identical to fastMRI):

* ``kspace``: complex64, ``(slices, H_k, W_k)`` (singlecoil) or
  ``(slices, coils, H_k, W_k)`` (multicoil). Dim -2 is the readout
  direction, oversampled twice like the real scans, so ``H_k = 2 * rh``;
  dim -1 is the phase-encode direction, a little wider than the
  reconstruction (default :func:`default_kspace_width`, e.g. 128 -> 144,
  like the 320 -> 368 of the knee data). Every phase-encode line is sampled
  (no zero padding), so fastMRI's ``padding_left == 0`` and
  ``padding_right == W_k``.
* ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss`` (multicoil):
  float32 ``(slices, rh, rw)``, the centre crop of ``|x|`` or of the
  root-sum-of-squares over coils of the coil images ``x`` reconstructed
  from the *stored* (noisy, complex64) k-space.
* ``ismrmrd_header``: an ISMRMRD XML document (bytes) carrying
  ``encodedSpace``/``reconSpace`` matrix sizes and fields of view and the
  ``kspace_encoding_step_1`` limits that ``SliceDataset`` parses.
* File attributes ``acquisition`` (``CORPD_FBK``, ``CORPDFS_FBK``,
  ``AXT2``, ``AXT1``, ``AXFLAIR``), ``max`` and ``norm`` (maximum and
  Frobenius norm of the target volume) and ``patient_id``.

FFT convention (the same as :mod:`iconet_fastmri.physics.fft` and ``fastmri.fft2c``):
k-space is centred and orthonormal,
``kspace = fftshift(fft2(ifftshift(image), norm="ortho"))`` over the last two
axes, zero frequency at index ``(H // 2, W // 2)``. The files are computed
with :mod:`numpy.fft` on purpose, so they are an independent reference for
the torch FFT code.

Centre crops start at index ``(N - n) // 2`` along each axis, as in
``fastmri.data.transforms.center_crop``.

Phantoms (:func:`make_phantom_volume`): plain smooth ellipses make a poor
training distribution (a model trained on them loses about 1.5 dB on real
anatomy), so the phantoms contain the ingredients that matter for
reconstruction and super-resolution:

* an outer body/head outline whose contour is a radial Fourier series, with
  a folded (gyri-like) inner organ boundary made of high harmonics;
* several tissue compartments with different contrasts (two contrast
  families per anatomy, e.g. T2/T1/FLAIR-like brain and PD/PD-FS-like knee);
* edges ranging from hard (binary) through anti-aliased to soft (Gaussian
  blur widths of 0.4 to 3 pixels), obtained from approximate signed
  distances to each contour;
* multiplicative, multi-scale texture inside tissue (log-Gaussian band-pass
  noise at 3 to about 48 cycles per field of view, isotropic and oriented);
* thin structures 1-2 pixels wide (vessel/fibre-like curves, bright and
  dark, hard and soft), drawn as zero-level sets of smooth random fields and
  as explicit curves (falx, joint line, growth plates);
* a smooth low-order (quadratic) phase map.

All shape, contrast and texture parameters are smooth functions of the
slice position ``t`` in ``[-0.8, 0.8]``, so neighbouring slices of one volume
resemble each other like real contiguous slices. The object lies inside the
centre ``recon_size`` region of the ``(H_k, W_k)`` image; the rest of the
readout-oversampled field of view is empty (only noise), like real data.

Multicoil data use ``sigpy.mri.birdcage_maps`` sensitivities (normalised so
that their root-sum-of-squares is one, hence the RSS image equals the
magnitude of the phantom up to noise). Complex white Gaussian noise is added
in k-space; because the FFT is orthonormal its standard deviation is also the
image-domain noise level. ``noise_level`` is that standard deviation
relative to the maximum phantom magnitude; the default 0.005 gives a mean
tissue SNR of roughly 40 dB.

Everything is deterministic given ``seed``: volume ``i`` draws from
``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from scipy import special

__all__ = [
    "ACQUISITIONS",
    "ANATOMIES",
    "SyntheticVolume",
    "center_crop_np",
    "coil_sensitivities",
    "default_kspace_width",
    "fft2c_np",
    "ifft2c_np",
    "ismrmrd_header",
    "make_demo_splits",
    "make_phantom_volume",
    "simulate_volume",
    "write_fastmri_dataset",
]

PathLike = Union[str, os.PathLike]

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"

#: Anatomies understood by :func:`make_phantom_volume` ("mixed" picks one per volume).
ANATOMIES = ("knee", "brain", "mixed")

#: Acquisition names (fastMRI ``acquisition`` attribute) per anatomy.
ACQUISITIONS: Dict[str, Tuple[str, ...]] = {
    "knee": ("CORPD_FBK", "CORPDFS_FBK"),
    "brain": ("AXT2", "AXT1", "AXFLAIR"),
}

_RECON_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}

# The phantoms are drawn in float32 (2-4x faster transcendental functions than
# float64; the files are complex64 anyway). All scalar parameters are Python
# floats so that numpy's promotion rules keep the arrays in float32.
_DTYPE = np.float32

# Texture scales in cycles per reconstructed field of view (clipped below Nyquist).
_TEXTURE_CYCLES = (3.0, 8.0, 20.0, 48.0)


# ---------------------------------------------------------------------------
# Numpy reference transforms
# ---------------------------------------------------------------------------


def fft2c_np(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (numpy reference).

    Args:
        image: complex array ``(..., H, W)``, image origin at ``(H // 2, W // 2)``.

    Returns:
        Complex array ``(..., H, W)``, zero frequency at ``(H // 2, W // 2)``.
    """
    axes = (-2, -1)
    shifted = np.fft.ifftshift(image, axes=axes)
    return np.fft.fftshift(np.fft.fft2(shifted, axes=axes, norm="ortho"), axes=axes)


def ifft2c_np(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2D FFT over the last two axes (numpy reference).

    Args:
        kspace: complex array ``(..., H, W)``, zero frequency at ``(H // 2, W // 2)``.

    Returns:
        Complex image ``(..., H, W)``.
    """
    axes = (-2, -1)
    shifted = np.fft.ifftshift(kspace, axes=axes)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes)


def center_crop_np(data: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two axes, start index ``(N - n) // 2`` as in fastMRI.

    Args:
        data: array ``(..., H, W)``.
        shape: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
        View ``(..., h, w)``.
    """
    h, w = shape
    H, W = data.shape[-2:]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"cannot crop {data.shape[-2:]} to {shape}")
    top = (H - h) // 2
    left = (W - w) // 2
    return data[..., top : top + h, left : left + w]


def default_kspace_width(recon_width: int) -> int:
    """Default phase-encode k-space width: a little wider than the reconstruction.

    ``recon_width + 2 * ceil(recon_width / 16)``, rounded up to an even number
    (128 -> 144, 320 -> 360, 32 -> 36), mimicking the phase oversampling of
    the fastMRI knee data (320 reconstructed from 368 columns).

    Args:
        recon_width: reconstructed width ``rw``.

    Returns:
        ``W_k >= recon_width``.
    """
    width = recon_width + 2 * math.ceil(recon_width / 16)
    return width + (width % 2)


# ---------------------------------------------------------------------------
# Phantom building blocks
# ---------------------------------------------------------------------------


@dataclass
class _Grid:
    """Coordinates of the canvas on which the phantom is drawn.

    ``u`` (columns) and ``v`` (rows) are in units of half the reconstruction
    width/height, centred at the image origin ``(H // 2, W // 2)``; the
    reconstruction box is ``|u| <= 1, |v| <= 1``. ``px`` is pixels per unit
    (geometric mean over both axes), used to express blur widths in pixels.
    """

    u: np.ndarray
    v: np.ndarray
    px: float
    recon_width: int

    @property
    def shape(self) -> Tuple[int, int]:
        return self.u.shape  # type: ignore[return-value]


def _make_grid(rows: int, cols: int, row0: int, H: int, W: int, rh: int, rw: int) -> _Grid:
    """Canvas rows ``row0 .. row0 + rows - 1`` of an ``(H, W)`` image."""
    r = np.arange(row0, row0 + rows, dtype=np.float64) - H // 2
    c = np.arange(cols, dtype=np.float64) - W // 2
    v, u = np.meshgrid(r / (rh / 2.0), c / (rw / 2.0), indexing="ij")
    return _Grid(u=u.astype(_DTYPE), v=v.astype(_DTYPE), px=math.sqrt(rh * rw) / 2.0,
                 recon_width=rw)


def _distance(g: np.ndarray) -> np.ndarray:
    """Approximate signed distance in pixels (< 0 inside) from an implicit function.

    First-order estimate ``g / |grad g|`` with the gradient per pixel; exact
    for straight contours and good near any smooth contour.
    """
    gy, gx = np.gradient(g)
    return g / np.maximum(np.hypot(gy, gx), 1e-9)


Harmonics = Sequence[Tuple[float, float, float]]


def _star(
    grid: _Grid,
    cu: float,
    cv: float,
    ru: float,
    rv: float,
    rot: float = 0.0,
    harmonics: Harmonics = (),
    p: float = 2.0,
    radial: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) to a star-shaped contour.

    The contour is ``rho_p(a, b) = 1 + sum_k amp_k cos(k theta + phase_k)
    + radial(theta)`` in the rotated, scaled frame ``(a, b)`` of a
    (super-)ellipse with centre ``(cu, cv)``, semi-axes ``(ru, rv)`` and
    exponent ``p`` (2 = ellipse, larger = boxier). ``k = 0`` terms shift the
    mean radius; high ``k`` terms and ``radial`` (any 2*pi-periodic function)
    fold the boundary.

    Returns:
        Array of the grid's shape.
    """
    du = grid.u - cu
    dv = grid.v - cv
    c, s = math.cos(rot), math.sin(rot)
    a = (c * du + s * dv) / max(ru, 1e-3)
    b = (-s * du + c * dv) / max(rv, 1e-3)
    if p == 2.0:
        rho = np.hypot(a, b)
    else:
        rho = (np.abs(a) ** p + np.abs(b) ** p) ** (1.0 / p)
    radius: Union[float, np.ndarray] = 1.0
    if len(harmonics) or radial is not None:
        theta = np.arctan2(b, a)
        for k, amp, phase in harmonics:
            radius = radius + amp * np.cos(k * theta + phase)
        if radial is not None:
            radius = radius + radial(theta)
    return _distance(rho - radius)


def _curve_distance(grid: _Grid, coeffs: Sequence[float], vertical: bool) -> np.ndarray:
    """Unsigned distance (pixels) to the polynomial curve ``u = poly(v)`` or ``v = poly(u)``.

    Args:
        coeffs: polynomial coefficients, highest degree first (as ``numpy.polyval``).
        vertical: True for ``u = poly(v)``, False for ``v = poly(u)``.
    """
    x, y = (grid.v, grid.u) if vertical else (grid.u, grid.v)
    poly: Union[float, np.ndarray] = 0.0
    for coeff in coeffs:  # Horner with Python floats (keeps float32)
        poly = poly * x + float(coeff)
    return np.abs(_distance(y - poly))


def _edge(d: np.ndarray, sigma: float) -> np.ndarray:
    """Inside indicator from a signed distance; hard if ``sigma <= 0``, else Gaussian-blurred.

    ``sigma`` is the standard deviation of the edge blur in pixels.
    """
    if sigma <= 0:
        return (d < 0).astype(d.dtype)
    return special.ndtr(-d / sigma)


def _line(dist: np.ndarray, width: float, soft: bool) -> np.ndarray:
    """Line profile from an unsigned distance in pixels.

    Hard lines are ``width`` pixels wide (binary); soft lines are Gaussian
    with full width at half maximum ``width``.
    """
    if soft:
        sigma = width / 2.355
        return np.exp(-0.5 * (dist / sigma) ** 2)
    return (dist < 0.5 * width).astype(dist.dtype)


def _paint(image: np.ndarray, mask: np.ndarray, value: Union[float, np.ndarray]) -> np.ndarray:
    """Alpha-composite ``value`` over ``image`` with coverage ``mask`` in [0, 1]."""
    return image + mask * (value - image)


def _bandpass_noise(
    rng: np.random.Generator,
    shape: Tuple[int, int],
    f0: float,
    octave_width: float = 0.5,
    orientation: Optional[float] = None,
    anisotropy: float = 0.25,
) -> np.ndarray:
    """Unit-variance band-pass filtered Gaussian noise.

    Args:
        rng: random generator.
        shape: ``(h, w)``.
        f0: centre frequency in cycles per pixel.
        octave_width: standard deviation of the log-Gaussian filter in octaves.
        orientation: if given, keep only frequencies near this direction
            (radians, in the ``(row, col)`` frequency plane); the structures are
            then stripes/fibres perpendicular to it.
        anisotropy: angular selectivity for ``orientation`` (smaller = narrower).

    Returns:
        float32 array ``(h, w)`` with zero mean and unit standard deviation.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    fr = np.hypot(fy, fx)
    with np.errstate(divide="ignore"):
        filt = np.exp(-0.5 * (np.log2(np.maximum(fr, 1e-12) / f0) / octave_width) ** 2)
    filt[0, 0] = 0.0
    if orientation is not None:
        along = fy * math.cos(orientation) + fx * math.sin(orientation)
        cos_angle = along / np.maximum(fr, 1e-12)
        filt = filt * np.exp(-0.5 * ((1.0 - cos_angle**2) / anisotropy**2))
    white = rng.standard_normal((h, w))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=(h, w))
    std = field.std()
    return (field / std if std > 0 else field).astype(_DTYPE)


class _EvolvingField:
    """Random field that varies smoothly with the slice position ``t``.

    ``F(t) = cos(w t) A + sin(w t) B`` with independent fields ``A``, ``B``,
    so ``F(t)`` stays unit-variance and neighbouring slices are correlated by
    ``cos(w dt)``. The gradient is precomputed for zero-level-set lines.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, omega: float, with_gradient: bool = False):
        self.a, self.b, self.omega = a, b, omega
        self.grad_a = np.gradient(a) if with_gradient else None
        self.grad_b = np.gradient(b) if with_gradient else None

    def __call__(self, t: float) -> np.ndarray:
        c, s = math.cos(self.omega * t), math.sin(self.omega * t)
        return c * self.a + s * self.b

    def level_set_distance(self, t: float) -> np.ndarray:
        """Approximate distance in pixels to the zero-level set of ``F(t)``."""
        assert self.grad_a is not None and self.grad_b is not None
        c, s = math.cos(self.omega * t), math.sin(self.omega * t)
        field = c * self.a + s * self.b
        gy = c * self.grad_a[0] + s * self.grad_b[0]
        gx = c * self.grad_a[1] + s * self.grad_b[1]
        return np.abs(field) / np.maximum(np.hypot(gy, gx), 1e-9)


class _PhantomModel:
    """Per-volume random state shared by the anatomy models."""

    def __init__(self, rng: np.random.Generator, grid: _Grid):
        self.rng = rng
        self.grid = grid
        shape = grid.shape
        nyquist = 0.45
        self.texture: List[_EvolvingField] = []
        for cycles in _TEXTURE_CYCLES:
            f0 = min(cycles / grid.recon_width, nyquist)
            omega = 0.6 + 0.05 * cycles  # fine texture decorrelates faster across slices
            self.texture.append(
                _EvolvingField(
                    _bandpass_noise(rng, shape, f0), _bandpass_noise(rng, shape, f0), omega
                )
            )
        # Oriented (fibre-like) texture.
        fibre_angle = rng.uniform(0, math.pi)
        f_fib = min(20.0 / grid.recon_width, nyquist)
        self.fibre_texture = _EvolvingField(
            _bandpass_noise(rng, shape, f_fib, orientation=fibre_angle),
            _bandpass_noise(rng, shape, f_fib, orientation=fibre_angle),
            1.2,
        )
        # Smooth fields whose zero-level sets are vessel/fibre-like curves.
        self.curve_fields: List[_EvolvingField] = []
        for cycles, orient in ((4.0, None), (6.0, None), (9.0, rng.uniform(0, math.pi))):
            f0 = min(cycles / grid.recon_width, nyquist)
            self.curve_fields.append(
                _EvolvingField(
                    _bandpass_noise(rng, shape, f0, 0.35, orient, 0.35),
                    _bandpass_noise(rng, shape, f0, 0.35, orient, 0.35),
                    rng.uniform(0.8, 1.6),
                    with_gradient=True,
                )
            )
        # Very smooth windows restricting each curve family to some regions.
        f_win = min(2.0 / grid.recon_width, nyquist)
        self.windows = [
            _EvolvingField(
                _bandpass_noise(rng, shape, f_win, 0.6),
                _bandpass_noise(rng, shape, f_win, 0.6),
                0.7,
            )
            for _ in range(3)
        ]
        # Quadratic phase: coefficients of 1, u, v, u^2, uv, v^2 and their slope in t.
        self.phase0 = [float(x) for x in rng.normal(0.0, [1.5, 0.5, 0.5, 0.4, 0.3, 0.4])]
        self.phase1 = [float(x) for x in rng.normal(0.0, [0.3, 0.15, 0.15, 0.15, 0.1, 0.15])]

    def tex(self, t: float, weights: Sequence[float], fibre: float = 0.0) -> np.ndarray:
        """Multiplicative texture ``1 + sum_k w_k T_k(t) (+ fibre)``, kept positive."""
        out = np.ones(self.grid.shape, dtype=_DTYPE)
        for w, field in zip(weights, self.texture):
            if w:
                out += w * field(t)
        if fibre:
            out += fibre * self.fibre_texture(t)
        return np.maximum(out, 0.05)

    def curves(
        self,
        t: float,
        family: int,
        width: float,
        soft: bool,
        window: int,
        threshold: float = 0.3,
    ) -> np.ndarray:
        """Thin curves (coverage in [0, 1]) from a zero-level set, kept where a window is high."""
        line = _line(self.curve_fields[family].level_set_distance(t), width, soft)
        region = special.ndtr((self.windows[window](t) - threshold) / 0.25)
        return line * region

    def phase(self, t: float) -> np.ndarray:
        """Smooth low-order phase map (radians)."""
        c = [a + b * t for a, b in zip(self.phase0, self.phase1)]
        u, v = self.grid.u, self.grid.v
        return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v

    def harmonics(self, ks: Sequence[int], scale: float) -> List[Tuple[int, float, float, float]]:
        """Random contour harmonics ``(k, amplitude, phase, phase drift per unit t)``."""
        return [
            (
                int(k),
                float(self.rng.normal(0.0, scale)),
                float(self.rng.uniform(0, 2 * math.pi)),
                float(self.rng.normal(0.0, 0.8)),
            )
            for k in ks
        ]

    @staticmethod
    def at(
        harm: Sequence[Tuple[int, float, float, float]], t: float, gain: float = 1.0
    ) -> Harmonics:
        """Evaluate drifting harmonics at slice position ``t``."""
        return [(k, gain * a, ph + dph * t) for k, a, ph, dph in harm]

    def render(self, t: float) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class _Folds:
    """Inward folds of a contour (sulci), a 2*pi-periodic radial perturbation.

    ``r(theta) -= depth(theta) * ((1 + cos phi(theta)) / 2) ** sharpness`` with a
    frequency-modulated fold phase ``phi = k theta + sum_m a_m sin(m theta + psi_m)``
    (irregular fold spacing) and a slowly varying depth. Large ``sharpness``
    gives narrow sulci between broad gyri. Phases drift with ``t`` so the
    folds move smoothly from slice to slice.
    """

    def __init__(self, rng: np.random.Generator, k_range: Tuple[int, int], depth: float,
                 sharpness: float):
        self.k = int(rng.integers(k_range[0], k_range[1] + 1))
        self.depth = depth
        self.sharpness = sharpness
        self.fm = [
            (m, rng.uniform(0.3, 1.0) * 3.0 / m, rng.uniform(0, 2 * math.pi)) for m in (1, 2, 3, 5)
        ]
        self.phi0 = rng.uniform(0, 2 * math.pi)
        self.drift = float(rng.normal(0.0, 1.5))
        self.depth_mod = [
            (m, rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi)) for m in (1, 2, 3)
        ]

    def at(self, t: float, gain: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
        """Radial perturbation function of ``theta`` at slice position ``t``."""

        def radial(theta: np.ndarray) -> np.ndarray:
            phi = self.k * theta + self.phi0 + self.drift * t
            for m, a, psi in self.fm:
                phi = phi + a * np.sin(m * theta + psi + 0.3 * t)
            depth = np.full_like(theta, self.depth * gain)
            for m, a, psi in self.depth_mod:
                depth = depth * (1.0 + a * np.cos(m * theta + psi - 0.5 * t))
            return -depth * (0.5 + 0.5 * np.cos(phi)) ** self.sharpness

        return radial


def _sum_radial(*funcs: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda theta: sum(f(theta) for f in funcs)


class _BrainModel(_PhantomModel):
    """Axial head slice: scalp, skull, CSF, folded cortex, white matter, ventricles, nuclei."""

    CONTRASTS = {
        "AXT2": dict(scalp=0.75, skull=0.05, csf=1.0, gm=0.55, wm=0.40, nuclei=0.47, lesion=0.9,
                     vessel_bright=0.85),
        "AXT1": dict(scalp=0.95, skull=0.05, csf=0.12, gm=0.45, wm=0.62, nuclei=0.52, lesion=0.3,
                     vessel_bright=0.9),
        "AXFLAIR": dict(scalp=0.7, skull=0.05, csf=0.08, gm=0.62, wm=0.45, nuclei=0.55, lesion=1.0,
                        vessel_bright=0.8),
    }

    def __init__(self, rng: np.random.Generator, grid: _Grid, acquisition: str):
        super().__init__(rng, grid)
        self.c = self.CONTRASTS[acquisition]
        r = rng
        self.center = [float(x) for x in r.normal(0.0, 0.02, size=2)]
        self.center_drift = [float(x) for x in r.normal(0.0, 0.02, size=2)]
        self.ru = r.uniform(0.70, 0.80)
        self.rv = r.uniform(0.84, 0.92)
        self.rot = float(r.normal(0.0, 0.06))
        self.shrink = r.uniform(0.15, 0.35)  # head radius ~ sqrt(1 - shrink t^2)
        self.outline = self.harmonics([2, 3, 4], 0.015)
        self.scalp = r.uniform(0.04, 0.06)
        self.skull = r.uniform(0.035, 0.05)
        self.gap = self.scalp + self.skull + r.uniform(0.01, 0.02)
        # Many shallow-to-medium sulci plus a few deep, narrow fissures.
        self.sulci = _Folds(r, (16, 26), r.uniform(0.09, 0.14), r.uniform(5.0, 9.0))
        self.fissures = _Folds(r, (4, 8), r.uniform(0.15, 0.22), r.uniform(12.0, 20.0))
        self.gm_thickness = r.uniform(0.045, 0.065)  # cortical ribbon, units of half FOV
        self.vent = dict(
            t0=r.uniform(-0.3, 0.3), width=r.uniform(0.6, 0.9), sep=r.uniform(0.07, 0.11),
            ru=r.uniform(0.045, 0.07), rv=r.uniform(0.22, 0.30), rot=r.uniform(0.1, 0.25),
            harm=self.harmonics([2, 3], 0.12),
        )
        self.nuclei = [
            (r.uniform(0.17, 0.24), r.uniform(-0.05, 0.08), r.uniform(0.08, 0.11),
             r.uniform(0.11, 0.15), r.uniform(0.2, 0.5), r.uniform(1.5, 3.0)),
            (r.uniform(0.07, 0.11), r.uniform(0.12, 0.2), r.uniform(0.06, 0.08),
             r.uniform(0.07, 0.1), r.uniform(-0.3, 0.3), r.uniform(2.0, 3.0)),
        ]
        n_lesions = int(r.integers(0, 4))
        self.lesions = [
            (r.uniform(-0.45, 0.45), r.uniform(-0.5, 0.5), r.uniform(0.02, 0.05),
             r.uniform(-0.8, 0.8), r.uniform(0.3, 0.6), r.uniform(0.4, 1.2))
            for _ in range(n_lesions)
        ]
        self.falx = [float(x) for x in r.normal(0.0, [0.05, 0.02, 0.01])]

    def render(self, t: float) -> np.ndarray:
        g, c = self.grid, self.c
        size = math.sqrt(1.0 - self.shrink * t * t)
        cu, cv = (c0 + c1 * t for c0, c1 in zip(self.center, self.center_drift))
        ru, rv = self.ru * size, self.rv * size
        outline = self.at(self.outline, t)

        d_head = _star(g, cu, cv, ru, rv, self.rot, outline)
        px = g.px
        img = np.zeros(g.shape, dtype=_DTYPE)
        img = _paint(img, _edge(d_head, 0.7), c["scalp"] * self.tex(t, (0.05, 0.08, 0.06, 0.0)))
        img = _paint(img, _edge(d_head + self.scalp * px, 0.5), c["skull"])
        img = _paint(img, _edge(d_head + (self.scalp + self.skull) * px, 1.0),
                     c["csf"] * self.tex(t, (0.03, 0.0, 0.0, 0.02)))

        # Brain surface: outline scaled inwards and folded (gyri and sulci);
        # the CSF painted before fills the sulci.
        scale_b = 1.0 - self.gap / min(ru, rv)
        folds = _sum_radial(self.sulci.at(t), self.fissures.at(t))
        d_brain = _star(g, cu, cv, ru * scale_b, rv * scale_b, self.rot, outline, radial=folds)
        in_brain = _edge(d_brain, 0.6)
        img = _paint(img, in_brain, c["gm"] * self.tex(t, (0.04, 0.05, 0.04, 0.03)))

        # White matter: the cortical ribbon has a roughly constant thickness,
        # so WM is the brain shrunk by it (WM "fingers" reach into the gyri).
        img = _paint(img, _edge(d_brain + self.gm_thickness * px, 1.3) * in_brain,
                     c["wm"] * self.tex(t, (0.03, 0.04, 0.03, 0.02), fibre=0.04))

        # Deep grey nuclei (soft edges), symmetric pairs.
        for nu, nv, nru, nrv, nrot, sigma in self.nuclei:
            for side in (-1.0, 1.0):
                d = _star(g, cu + side * nu * size, cv + nv, nru * size, nrv * size, side * nrot)
                value = c["nuclei"] * self.tex(t, (0.02, 0.04, 0.03, 0.0))
                img = _paint(img, _edge(d, sigma), value)

        # Lateral ventricles (sharp), appear and vanish smoothly with t.
        vt = self.vent
        vis = max(0.0, 1.0 - ((t - vt["t0"]) / vt["width"]) ** 2)
        if vis > 0.02:
            for side in (-1.0, 1.0):
                harm = [(k, a, ph + side) for k, a, ph in self.at(vt["harm"], t)]
                d = _star(g, cu + side * vt["sep"] * size, cv - 0.05, vt["ru"] * vis,
                          vt["rv"] * math.sqrt(vis), side * vt["rot"], harm)
                img = _paint(img, _edge(d, 0.4 if side > 0 else 0.0), c["csf"])

        # Focal lesions (white-matter hyperintensities), soft.
        for lu, lv, lr, lt, lw, sigma in self.lesions:
            rad = lr * max(0.0, 1.0 - ((t - lt) / lw) ** 2)
            if rad > 0.004:
                d = _star(g, cu + lu * size, cv + lv * size, rad, rad * 1.3)
                img = _paint(img, _edge(d, sigma) * in_brain, c["lesion"])

        # Thin structures: falx (hard, 1 px), vessels bright/dark, hard/soft.
        falx = _line(_curve_distance(g, [self.falx[2], self.falx[1], cu + self.falx[0]], True),
                     1.0, soft=False)
        falx *= in_brain * (np.abs(g.v - cv) > 0.35 * rv)
        img = _paint(img, falx, c["csf"] * 0.9)
        bright = c["vessel_bright"]
        img = _paint(img, 0.7 * self.curves(t, 0, 1.0, False, 0, 1.0) * in_brain, bright)
        img = _paint(img, 0.6 * self.curves(t, 1, 1.6, True, 1, 1.0) * in_brain, bright)
        img = img * (1.0 - 0.5 * self.curves(t, 2, 1.4, True, 2, 0.9) * in_brain)
        return img


class _KneeModel(_PhantomModel):
    """Coronal knee slice: fat, muscle, femur/tibia/fibula, cartilage, menisci, ligaments."""

    CONTRASTS = {
        "CORPD_FBK": dict(fat=0.95, muscle=0.38, marrow=0.80, cortex=0.05, cartilage=0.62,
                          meniscus=0.06, ligament=0.12, fluid=0.78),
        "CORPDFS_FBK": dict(fat=0.16, muscle=0.42, marrow=0.22, cortex=0.04, cartilage=0.66,
                            meniscus=0.05, ligament=0.10, fluid=1.0),
    }

    def __init__(self, rng: np.random.Generator, grid: _Grid, acquisition: str):
        super().__init__(rng, grid)
        self.c = self.CONTRASTS[acquisition]
        r = rng
        self.leg = dict(cu=r.normal(0, 0.02), ru=r.uniform(0.78, 0.88), rv=r.uniform(0.9, 0.95),
                        p=r.uniform(2.4, 3.2), rot=r.normal(0, 0.03))
        self.outline = self.harmonics([2, 3, 4], 0.015) + self.harmonics([9, 12, 15], 0.004)
        self.fat = r.uniform(0.08, 0.14)
        self.fat_harm = self.harmonics([1, 2, 3], 0.02)
        self.joint = dict(v=r.normal(0, 0.04), tilt=r.normal(0, 0.04), drift=r.normal(0, 0.03))
        self.femur = dict(cu=r.normal(0, 0.03), ru=r.uniform(0.26, 0.32), rv=r.uniform(0.45, 0.55),
                          cond_sep=r.uniform(0.17, 0.22), cond_r=r.uniform(0.17, 0.21),
                          notch=r.uniform(0.04, 0.07))
        self.tibia = dict(cu=r.normal(0, 0.03), ru=r.uniform(0.40, 0.46), rv=r.uniform(0.42, 0.5),
                          p=r.uniform(3.0, 4.5))
        self.fibula_side = float(r.choice([-1.0, 1.0]))
        self.cart = r.uniform(0.03, 0.045)
        self.cortex = r.uniform(0.02, 0.035)
        self.bone_harm = self.harmonics([3, 5, 7], 0.01)
        self.physis = [[float(x) for x in row] for row in r.normal(0.0, [0.1, 0.02], size=(2, 2))]
        self.collateral = [float(x) for x in r.uniform(0.02, 0.06, size=2)]

    def render(self, t: float) -> np.ndarray:
        g, c = self.grid, self.c
        px = g.px
        lg = self.leg
        ru = lg["ru"] * (1.0 - 0.08 * t * t)
        outline = self.at(self.outline, t)
        d_leg = _star(g, lg["cu"], 0.0, ru, lg["rv"], lg["rot"], outline, lg["p"])
        in_leg = _edge(d_leg, 0.6)
        img = np.zeros(g.shape, dtype=_DTYPE)
        img = _paint(img, in_leg, c["fat"] * self.tex(t, (0.04, 0.06, 0.05, 0.03)))

        # Muscle/soft tissue inside a fat layer of varying thickness.
        fat_scale = 1.0 - self.fat
        d_muscle = _star(g, lg["cu"], 0.0, ru * fat_scale, lg["rv"] * (1 - 0.4 * self.fat),
                         lg["rot"], list(outline) + list(self.at(self.fat_harm, t)), lg["p"])
        in_muscle = _edge(d_muscle, 1.2) * in_leg
        muscle = c["muscle"] * self.tex(t, (0.03, 0.05, 0.04, 0.03), fibre=0.08)
        img = _paint(img, in_muscle, muscle)
        # Fat septa (bright, soft) and fascia (dark, hard) inside muscle.
        img = _paint(img, 0.7 * self.curves(t, 2, 1.5, True, 0, 0.6) * in_muscle, c["fat"])
        img = img * (1.0 - 0.5 * self.curves(t, 1, 1.0, False, 1, 0.9) * in_muscle)

        # Bones: union of femur shaft + condyles minus notch; tibia; fibula.
        vj = self.joint["v"] + self.joint["drift"] * t
        fm, tb = self.femur, self.tibia
        bone_h = self.at(self.bone_harm, t)
        sep = fm["cond_sep"] * (1.0 + 0.25 * t)
        d_femur = _star(g, fm["cu"], vj - 0.08 - fm["rv"], fm["ru"], fm["rv"], 0.0, bone_h, 3.0)
        for side in (-1.0, 1.0):
            d_cond = _star(g, fm["cu"] + side * sep, vj - 0.04 - 0.85 * fm["cond_r"],
                           fm["cond_r"], 0.85 * fm["cond_r"], 0.0, bone_h)
            d_femur = np.minimum(d_femur, d_cond)
        d_notch = _star(g, fm["cu"], vj - 0.02, fm["notch"] * (1.0 + 0.6 * t), 0.14)
        d_femur = np.maximum(d_femur, -d_notch)
        d_tibia = _star(g, tb["cu"], vj + 0.04 + tb["rv"], tb["ru"], tb["rv"], self.joint["tilt"],
                        bone_h, tb["p"])
        d_spine = _star(g, tb["cu"], vj + 0.045, 0.06, 0.05)
        d_tibia = np.minimum(d_tibia, d_spine)
        fib_r = 0.08 * max(0.0, 1.0 - ((t - 0.4) / 0.8) ** 2)
        d_fib = _star(g, self.fibula_side * 0.5, vj + 0.62, max(fib_r, 1e-3), 0.3, 0.0, bone_h)
        d_bone = np.minimum(np.minimum(d_femur, d_tibia), d_fib if fib_r > 0.005 else np.inf)

        # Articular cartilage: a band around the bone ends near the joint line.
        near_joint = np.exp(-(((g.v - vj) / 0.22) ** 2))
        cart = _edge(np.minimum(d_femur, d_tibia) - self.cart * px, 0.5) * near_joint * in_muscle
        img = _paint(img, cart, c["cartilage"] * self.tex(t, (0.0, 0.03, 0.03, 0.0)))
        # Joint fluid line between the cartilage surfaces (thin, bright, hard).
        joint_line = _line(
            _curve_distance(g, [0.03 * t, self.joint["tilt"], vj], vertical=False), 1.0, soft=False
        )
        img = _paint(img, joint_line * (np.abs(g.u) < 0.38) * in_muscle, c["fluid"])

        # Cortical bone (dark, sharp) and trabecular marrow (strong fine texture).
        img = _paint(img, _edge(d_bone, 0.0) * in_muscle, c["cortex"])
        marrow = _edge(d_bone + self.cortex * px, 0.5) * in_muscle
        img = _paint(img, marrow, c["marrow"] * self.tex(t, (0.04, 0.05, 0.07, 0.04)))
        # Growth plates (physes): soft dark curves across femur and tibia.
        plates = ((self.physis[0], d_femur, -0.33), (self.physis[1], d_tibia, 0.3))
        for (a1, a2), bone_d, off in plates:
            dist = _curve_distance(g, [a2, a1 * 0.3, vj + off], vertical=False)
            inside = _edge(bone_d + self.cortex * px, 0.5)
            img = img * (1.0 - 0.55 * _line(dist, 1.8, soft=True) * inside)

        # Menisci: dark triangles at the joint margins (hard edges).
        for side in (-1.0, 1.0):
            d = _star(g, side * (sep + fm["cond_r"] * 0.75), vj + 0.005, 0.08, 0.04, 0.0,
                      [(3, 0.22, math.pi / 2 if side < 0 else -math.pi / 2)])
            img = _paint(img, _edge(d, 0.0) * in_muscle, c["meniscus"])
        # Cruciate ligaments in the notch (dark, soft).
        for k, (du, rot) in enumerate(((0.015, 0.35), (-0.02, -0.45))):
            vis = max(0.0, 1.0 - ((t + 0.3 - 0.6 * k) / 0.9) ** 2)
            if vis > 0.02:
                d = _star(g, fm["cu"] + du, vj - 0.04, 0.035 * vis, 0.16, rot)
                img = _paint(img, _edge(d, 1.0), c["ligament"])
        # Collateral ligaments: dark bands along both sides of the joint.
        for side, width in zip((-1.0, 1.0), self.collateral):
            u0 = side * (fm["cond_sep"] + fm["cond_r"] + 0.07)
            dist = _curve_distance(g, [side * 0.3, 0.0, u0], vertical=True)
            band = _line(dist, width * px, soft=True) * (np.abs(g.v - vj) < 0.3) * in_muscle
            img = _paint(img, 0.8 * band, c["ligament"])
        # Vessels: bright soft curves in the soft tissue.
        img = _paint(img, 0.6 * self.curves(t, 0, 1.8, True, 2, 0.9) * in_muscle, c["fluid"])
        return img


def _t_positions(num_slices: int) -> np.ndarray:
    """Slice positions ``t`` in ``[-0.8, 0.8]`` (0 for a single slice)."""
    if num_slices == 1:
        return np.zeros(1)
    return np.linspace(-0.8, 0.8, num_slices)


def make_phantom_volume(
    num_slices: int,
    recon_size: Tuple[int, int] = (128, 128),
    kspace_width: Optional[int] = None,
    anatomy: str = "mixed",
    acquisition: Optional[str] = None,
    seed: Union[int, Sequence[int], np.random.Generator] = 0,
) -> Tuple[np.ndarray, str]:
    """Noise-free complex phantom volume on the readout-oversampled image grid.

    Args:
        num_slices: number of slices ``S``.
        recon_size: ``(rh, rw)``; the object lies inside the centre ``(rh, rw)`` box.
        kspace_width: ``W_k`` (default :func:`default_kspace_width` of ``rw``).
        anatomy: "knee", "brain" or "mixed" (chosen at random).
        acquisition: contrast (one of :data:`ACQUISITIONS` of the anatomy);
            default chosen at random.
        seed: integer, integer sequence or ``numpy.random.Generator``.

    Returns:
        ``(image, acquisition)`` where ``image`` is complex64 of shape
        ``(S, 2 * rh, W_k)`` with maximum magnitude 1 and a smooth phase.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if anatomy == "mixed":
        anatomy = str(rng.choice(["knee", "brain"]))
    if acquisition is None:
        choices = ACQUISITIONS[anatomy]
        probs = (0.5, 0.5) if anatomy == "knee" else (0.5, 0.25, 0.25)
        acquisition = str(rng.choice(choices, p=probs))
    elif acquisition not in ACQUISITIONS[anatomy]:
        raise ValueError(f"acquisition {acquisition!r} not in {ACQUISITIONS[anatomy]}")

    rh, rw = recon_size
    H = 2 * rh
    W = default_kspace_width(rw) if kspace_width is None else int(kspace_width)
    if W < rw:
        raise ValueError(f"kspace_width {W} < recon width {rw}")
    # Draw only the rows around the reconstruction box (the rest stays empty).
    margin = max(4, rh // 8)
    row0 = max(0, (H - rh) // 2 - margin)
    rows = min(H, rh + 2 * margin + 1) if row0 > 0 else H
    rows = min(rows, H - row0)
    grid = _make_grid(rows, W, row0, H, W, rh, rw)
    model_cls = _KneeModel if anatomy == "knee" else _BrainModel
    model = model_cls(rng, grid, acquisition)

    image = np.zeros((num_slices, H, W), dtype=np.complex64)
    for s, t in enumerate(_t_positions(num_slices)):
        magnitude = np.clip(model.render(float(t)), 0.0, None)
        image[s, row0 : row0 + rows] = magnitude * np.exp(1j * model.phase(float(t)))
    peak = np.abs(image).max()
    if peak > 0:
        image *= float(1.0 / peak)
    return image, acquisition


# ---------------------------------------------------------------------------
# Coils, header, simulation
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _birdcage(num_coils: int, H: int, W: int, radius: float) -> np.ndarray:
    import sigpy.mri  # lazy: sigpy takes ~2 s to import and is only needed for multicoil

    maps = sigpy.mri.birdcage_maps((num_coils, H, W), r=radius, nzz=num_coils,
                                   dtype=np.complex64)
    maps.setflags(write=False)
    return maps


def coil_sensitivities(
    num_coils: int, image_shape: Tuple[int, int], radius: float = 1.25
) -> np.ndarray:
    """Birdcage coil sensitivities with unit root-sum-of-squares.

    Uses ``sigpy.mri.birdcage_maps((num_coils, H, W), r=radius, nzz=num_coils)``;
    the coils sit on a ring of relative radius ``radius`` (in units of half the
    field of view along each axis), so the sensitivities vary strongly across
    the object in the phase-encode direction.

    Args:
        num_coils: number of coils ``C``.
        image_shape: ``(H, W)`` image grid (the readout-oversampled one).
        radius: relative coil-ring radius.

    Returns:
        Read-only complex64 array ``(C, H, W)`` with ``sum_c |S_c|^2 == 1``.
    """
    return _birdcage(int(num_coils), int(image_shape[0]), int(image_shape[1]), float(radius))


def ismrmrd_header(
    encoded_size: Tuple[int, int],
    recon_size: Tuple[int, int],
    num_slices: int,
    num_coils: int = 1,
    acquisition: str = "CORPD_FBK",
    recon_fov_mm: Optional[Tuple[float, float]] = None,
    slice_thickness_mm: Optional[float] = None,
) -> bytes:
    """ISMRMRD XML header (bytes) in the form fastMRI's ``SliceDataset`` parses.

    ``x`` is the readout (k-space dim -2) and ``y`` the phase encode (dim -1).
    ``kspace_encoding_step_1`` is ``(0, W_k - 1, W_k // 2)`` so fastMRI derives
    ``padding_left = 0`` and ``padding_right = W_k`` (no zero-filled columns).

    Args:
        encoded_size: ``(H_k, W_k)``.
        recon_size: ``(rh, rw)``.
        num_slices: number of slices (``encodingLimits/slice``).
        num_coils: receiver channels.
        acquisition: protocol name; knee ("COR...") or brain ("AX...") defaults
            for the fields of view and the sequence parameters.
        recon_fov_mm: reconstructed field of view ``(x, y)`` in mm
            (default 140 mm knee, 220 mm brain, square pixels).
        slice_thickness_mm: default 3 mm knee, 5 mm brain.

    Returns:
        UTF-8 encoded XML with default namespace ``http://www.ismrm.org/ISMRMRD``.
    """
    Hk, Wk = (int(n) for n in encoded_size)
    rh, rw = (int(n) for n in recon_size)
    knee = acquisition.upper().startswith("COR")
    if recon_fov_mm is None:
        side = 140.0 if knee else 220.0
        recon_fov_mm = (side, side * rw / rh)
    if slice_thickness_mm is None:
        slice_thickness_mm = 3.0 if knee else 5.0
    fov_x, fov_y = recon_fov_mm
    enc_fov = (fov_x * Hk / rh, fov_y * Wk / rw)

    ET.register_namespace("", ISMRMRD_NAMESPACE)

    def el(parent: ET.Element, tag: str, text: Optional[object] = None) -> ET.Element:
        node = ET.SubElement(parent, f"{{{ISMRMRD_NAMESPACE}}}{tag}")
        if text is not None:
            node.text = f"{text:g}" if isinstance(text, float) else str(text)
        return node

    def xyz(parent: ET.Element, tag: str, values: Sequence[object]) -> None:
        node = el(parent, tag)
        for axis, value in zip("xyz", values):
            el(node, axis, value)

    def limit(parent: ET.Element, tag: str, lo: int, hi: int, centre: int) -> None:
        node = el(parent, tag)
        el(node, "minimum", lo)
        el(node, "maximum", hi)
        el(node, "center", centre)

    root = ET.Element(f"{{{ISMRMRD_NAMESPACE}}}ismrmrdHeader")
    el(root, "version", 1)
    meas = el(root, "measurementInformation")
    el(meas, "patientPosition", "FFS" if knee else "HFS")
    el(meas, "protocolName", acquisition)
    system = el(root, "acquisitionSystemInformation")
    el(system, "systemVendor", "SYNTHETIC")
    el(system, "systemModel", "iconet_fastmri.data.synthetic")
    el(system, "systemFieldStrength_T", 3.0)
    el(system, "receiverChannels", int(num_coils))
    cond = el(root, "experimentalConditions")
    el(cond, "H1resonanceFrequency_Hz", 127_728_000)
    enc = el(root, "encoding")
    enc_space = el(enc, "encodedSpace")
    xyz(enc_space, "matrixSize", (Hk, Wk, 1))
    thickness = float(slice_thickness_mm)
    xyz(enc_space, "fieldOfView_mm", (float(enc_fov[0]), float(enc_fov[1]), thickness))
    rec_space = el(enc, "reconSpace")
    xyz(rec_space, "matrixSize", (rh, rw, 1))
    xyz(rec_space, "fieldOfView_mm", (float(fov_x), float(fov_y), thickness))
    limits = el(enc, "encodingLimits")
    limit(limits, "kspace_encoding_step_1", 0, Wk - 1, Wk // 2)
    limit(limits, "kspace_encoding_step_2", 0, 0, 0)
    limit(limits, "average", 0, 0, 0)
    limit(limits, "slice", 0, max(int(num_slices) - 1, 0), 0)
    for tag in ("contrast", "phase", "repetition", "set", "segment"):
        limit(limits, tag, 0, 0, 0)
    el(enc, "trajectory", "cartesian")
    seq = el(root, "sequenceParameters")
    if knee:
        params = {"TR": 2750.0, "TE": 27.0, "TI": 100.0, "flipAngle_deg": 160.0}
    elif acquisition.upper().startswith("AXT1"):
        params = {"TR": 250.0, "TE": 2.64, "TI": 300.0, "flipAngle_deg": 70.0}
    else:
        params = {"TR": 6000.0, "TE": 113.0, "TI": 2000.0, "flipAngle_deg": 150.0}
    for tag, value in params.items():
        el(seq, tag, value)
    el(seq, "sequence_type", "TurboSpinEcho")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@dataclass
class SyntheticVolume:
    """One simulated volume in fastMRI layout.

    Attributes:
        kspace: complex64 ``(S, H_k, W_k)`` or ``(S, C, H_k, W_k)``, centred, orthonormal.
        target: float32 ``(S, rh, rw)``: centre crop of ESC / RSS of ``ifft2c(kspace)``.
        acquisition: fastMRI ``acquisition`` attribute.
        challenge: "singlecoil" or "multicoil".
    """

    kspace: np.ndarray
    target: np.ndarray
    acquisition: str
    challenge: str

    @property
    def recon_key(self) -> str:
        return _RECON_KEYS[self.challenge]


def simulate_volume(
    challenge: str,
    num_slices: int,
    recon_size: Tuple[int, int] = (128, 128),
    kspace_width: Optional[int] = None,
    num_coils: int = 8,
    noise_level: float = 0.005,
    anatomy: str = "mixed",
    image_scale: float = 1e-4,
    coil_radius: float = 1.25,
    seed: Union[int, Sequence[int], np.random.Generator] = 0,
) -> SyntheticVolume:
    """Simulate the k-space and target of one volume (in memory).

    Args:
        challenge: "singlecoil" or "multicoil".
        num_slices: slices ``S``.
        recon_size: ``(rh, rw)``.
        kspace_width: ``W_k`` (default :func:`default_kspace_width`).
        num_coils: coils ``C`` (multicoil only).
        noise_level: standard deviation of the complex k-space noise (per
            coil, ``E|n|^2``) relative to the phantom's maximum magnitude.
        anatomy: "knee", "brain" or "mixed".
        image_scale: maximum image magnitude (real fastMRI images are ~1e-4).
        coil_radius: relative birdcage radius (see :func:`coil_sensitivities`).
        seed: integer, integer sequence or generator.

    Returns:
        :class:`SyntheticVolume`.
    """
    if challenge not in _RECON_KEYS:
        raise ValueError(f'challenge must be "singlecoil" or "multicoil", got {challenge!r}')
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    image, acquisition = make_phantom_volume(
        num_slices, recon_size, kspace_width, anatomy, None, rng
    )
    image *= float(image_scale)
    if challenge == "multicoil":
        maps = coil_sensitivities(num_coils, image.shape[-2:], coil_radius)
        image = image[:, None] * maps[None]
    kspace = fft2c_np(image)
    if noise_level > 0:
        sigma = noise_level * image_scale / math.sqrt(2.0)
        noise = rng.standard_normal(kspace.shape + (2,), dtype=np.float32).view(np.complex64)
        kspace += sigma * noise[..., 0]
    kspace = kspace.astype(np.complex64, copy=False)

    # The target comes from the stored k-space (noise included), like fastMRI's.
    coil_images = ifft2c_np(kspace)
    if challenge == "multicoil":
        magnitude = np.sqrt(np.sum(coil_images.real**2 + coil_images.imag**2, axis=1))
    else:
        magnitude = np.abs(coil_images)
    target = np.ascontiguousarray(center_crop_np(magnitude, tuple(recon_size)), dtype=np.float32)
    return SyntheticVolume(kspace, target, acquisition, challenge)


# ---------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------

_PARTIAL_TAG = ".partial"


def _write_h5_atomic(path: pathlib.Path, write: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file under a hidden temporary name, then ``os.replace`` it."""
    tmp = path.with_name(f".{path.name}{_PARTIAL_TAG}-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as hf:
            write(hf)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_partials(folder: pathlib.Path) -> None:
    """Delete temporary files left by interrupted writers (SliceDataset would try to read them).

    Files of a writer that is still running (same host, live pid) are kept.
    """
    for stale in folder.glob(f".*.h5{_PARTIAL_TAG}-*"):
        pid_text = stale.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and _pid_alive(int(pid_text)):
            continue
        stale.unlink(missing_ok=True)


def _volume_path(out_dir: pathlib.Path, prefix: str, index: int) -> pathlib.Path:
    return out_dir / f"{prefix}{index:03d}.h5"


def write_fastmri_dataset(
    out_dir: PathLike,
    challenge: str,
    num_volumes: int,
    slices: int,
    recon_size: Tuple[int, int] = (128, 128),
    kspace_width: Optional[int] = None,
    num_coils: int = 8,
    noise_level: float = 0.005,
    seed: int = 0,
    prefix: str = "file_demo_",
    anatomy: str = "mixed",
    image_scale: float = 1e-4,
    first_index: int = 0,
) -> List[pathlib.Path]:
    """Write ``num_volumes`` synthetic volumes as fastMRI HDF5 files.

    Volume ``i`` (``first_index <= i < first_index + num_volumes``) is drawn
    from ``numpy.random.default_rng([seed, i])`` and written atomically to
    ``out_dir / f"{prefix}{i:03d}.h5"`` with ``patient_id`` ``"synthetic-{seed}-{i:04d}"``.
    The file layout is described in the module docstring; the files are
    readable by ``fastmri.data.SliceDataset(root=out_dir, challenge=challenge)``.

    Args:
        out_dir: destination folder (created if missing).
        challenge: "singlecoil" or "multicoil".
        num_volumes: number of files.
        slices: slices per volume ``S``.
        recon_size: ``(rh, rw)``; k-space has ``H_k = 2 * rh`` rows.
        kspace_width: ``W_k`` (default :func:`default_kspace_width` of ``rw``).
        num_coils: coils ``C`` (multicoil only).
        noise_level: k-space noise std relative to the maximum image magnitude.
        seed: base seed.
        prefix: file-name prefix.
        anatomy: "knee", "brain" or "mixed".
        image_scale: maximum image magnitude before noise.
        first_index: index of the first volume (to keep names and draws
            distinct across splits).

    Returns:
        Paths of the written files, in index order.
    """
    if challenge not in _RECON_KEYS:
        raise ValueError(f'challenge must be "singlecoil" or "multicoil", got {challenge!r}')
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rh, rw = (int(n) for n in recon_size)
    Wk = default_kspace_width(rw) if kspace_width is None else int(kspace_width)
    paths = []
    for index in range(first_index, first_index + num_volumes):
        vol = simulate_volume(
            challenge, slices, (rh, rw), Wk, num_coils, noise_level, anatomy, image_scale,
            seed=np.random.default_rng([seed, index]),
        )
        header = ismrmrd_header((2 * rh, Wk), (rh, rw), slices,
                                num_coils if challenge == "multicoil" else 1, vol.acquisition)

        def write(hf: h5py.File, vol: SyntheticVolume = vol, header: bytes = header,
                  index: int = index) -> None:
            hf.create_dataset("kspace", data=vol.kspace)
            hf.create_dataset(vol.recon_key, data=vol.target)
            hf.create_dataset("ismrmrd_header", data=np.bytes_(header))
            hf.attrs["acquisition"] = vol.acquisition
            hf.attrs["max"] = float(vol.target.max())
            hf.attrs["norm"] = float(np.linalg.norm(vol.target.astype(np.float64)))
            hf.attrs["patient_id"] = f"synthetic-{seed}-{index:04d}"

        path = _volume_path(out, prefix, index)
        _write_h5_atomic(path, write)
        paths.append(path)
    return paths


def _split_is_complete(
    folder: pathlib.Path,
    expected: Sequence[pathlib.Path],
    kspace_shape: Tuple[int, ...],
    prefix: str,
) -> bool:
    """True if exactly the expected `{prefix}*.h5` files exist with the expected k-space shape."""
    if not folder.is_dir():
        return False
    prefix_files = {p.name for p in folder.glob(f"{prefix}*.h5")}
    if prefix_files != {p.name for p in expected}:
        return False
    for path in expected:
        try:
            with h5py.File(path, "r") as hf:
                if hf["kspace"].shape != kspace_shape:
                    return False
        except (OSError, KeyError):
            return False
    return True


def make_demo_splits(
    root: PathLike,
    challenge: str = "singlecoil",
    train_volumes: int = 10,
    val_volumes: int = 3,
    slices: int = 8,
    recon_size: Tuple[int, int] = (128, 128),
    seed: int = 0,
    overwrite: bool = False,
    num_coils: int = 8,
    prefix: str = "file_demo_",
    **kwargs: object,
) -> Tuple[pathlib.Path, pathlib.Path]:
    """Write (or reuse) ``root/{challenge}_train`` and ``root/{challenge}_val``.

    Train volumes have indices ``0 .. train_volumes - 1`` and validation
    volumes the following ones, so names and random draws never coincide.
    A split is skipped if all its expected files exist with the expected
    k-space shape (cheap, so this can run at the start of every demo); it is
    not detected if only the seed, the anatomy or the noise level changed:
    pass ``overwrite=True`` then. Temporary files of interrupted writers are
    always removed and, when a split is (re)written, so are our files
    (``{prefix}*.h5``) that are no longer expected, since ``SliceDataset``
    reads every file in the folder.

    Args:
        root: parent folder.
        challenge: "singlecoil" or "multicoil".
        train_volumes: number of training volumes.
        val_volumes: number of validation volumes.
        slices: slices per volume.
        recon_size: ``(rh, rw)``.
        seed: base seed.
        overwrite: rewrite even when complete.
        num_coils: coils (multicoil only).
        prefix: file-name prefix.
        **kwargs: forwarded to :func:`write_fastmri_dataset` (``kspace_width``,
            ``noise_level``, ``anatomy``, ``image_scale``).

    Returns:
        ``(train_dir, val_dir)``.
    """
    if challenge not in _RECON_KEYS:
        raise ValueError(f'challenge must be "singlecoil" or "multicoil", got {challenge!r}')
    root = pathlib.Path(root)
    rh, rw = (int(n) for n in recon_size)
    kspace_width = kwargs.get("kspace_width")
    Wk = default_kspace_width(rw) if kspace_width is None else int(kspace_width)  # type: ignore
    coil_dims: Tuple[int, ...] = (num_coils,) if challenge == "multicoil" else ()
    kspace_shape = (slices, *coil_dims, 2 * rh, Wk)

    dirs = []
    first = 0
    for split, count in (("train", train_volumes), ("val", val_volumes)):
        folder = root / f"{challenge}_{split}"
        expected = [_volume_path(folder, prefix, i) for i in range(first, first + count)]
        if folder.is_dir():
            _remove_stale_partials(folder)
        if overwrite or not _split_is_complete(folder, expected, kspace_shape, prefix):
            folder.mkdir(parents=True, exist_ok=True)
            keep = {p.name for p in expected}
            for old in folder.glob(f"{prefix}*.h5"):
                if old.name not in keep:
                    old.unlink()
            write_fastmri_dataset(
                folder, challenge, count, slices, (rh, rw), num_coils=num_coils, seed=seed,
                prefix=prefix, first_index=first, **kwargs,  # type: ignore[arg-type]
            )
        dirs.append(folder)
        first += count
    return dirs[0], dirs[1]
