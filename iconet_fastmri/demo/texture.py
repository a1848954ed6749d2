"""Low-level drawing and noise helpers for the demo phantoms.

Signed distances to star-shaped and polynomial contours, hard/soft edges and
lines, alpha compositing, band-pass noise and slice-evolving random fields,
all on a :class:`_Grid` in float32; :mod:`.phantoms` builds the anatomy
models from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import special

# The phantoms are drawn in float32 (2-4x faster transcendental functions than
# float64; the files are complex64 anyway). All scalar parameters are Python
# floats so that numpy's promotion rules keep the arrays in float32.
_DTYPE = np.float32


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


def _sum_radial(*funcs: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda theta: sum(f(theta) for f in funcs)
