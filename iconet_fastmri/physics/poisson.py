"""Variable-density Poisson-disc sampling with a bounded density search (for :class:`.mask_functions.PoissonMask`)."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["bounded_poisson"]


def bounded_poisson(shape: Tuple[int, int], accel: float, calib: Tuple[int, int], crop_corner: bool,
                     tol: float, seed: int, max_steps: int) -> np.ndarray:
    """sigpy's variable-density Poisson-disc sampler (``sigpy.mri.samp._poisson``) with a bounded search.

    ``sigpy.mri.poisson`` bisects the density slope until the acceleration is
    within ``tol`` and never stops when no slope meets it (its bounds meet in
    floating point and stay there). Same density model and bisection here,
    at most ``max_steps`` steps, keeping the closest mask; one more than 25 %
    from ``accel`` is an error.
    """
    from sigpy.mri.samp import _poisson

    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    x = np.maximum(abs(x - nx / 2) - calib[-1] / 2, 0)
    x = x / max(x.max(), 1e-12)
    y = np.maximum(abs(y - ny / 2) - calib[-2] / 2, 0)
    y = y / max(y.max(), 1e-12)
    radius = np.sqrt(x**2 + y**2)
    state = np.random.get_state()  # _poisson seeds numpy's global RNG
    try:
        lo, hi = 0.0, float(max(nx, ny))
        best, best_err = None, np.inf
        for _ in range(max_steps):
            slope = (lo + hi) / 2
            rx = np.clip((1 + radius * slope) * nx / max(nx, ny), 1, None)
            ry = np.clip((1 + radius * slope) * ny / max(nx, ny), 1, None)
            mask = _poisson(nx, ny, 30, rx, ry, calib, seed)
            if crop_corner:
                mask = mask * (radius < 1)
            achieved = nx * ny / max(float(mask.sum()), 1.0)
            if abs(achieved - accel) < best_err:
                best, best_err = mask, abs(achieved - accel)
            if best_err < tol or hi - lo < 1e-9:
                break
            if achieved < accel:
                lo = slope
            else:
                hi = slope
    finally:
        np.random.set_state(state)
    if best is None or best_err > 0.25 * accel:
        raise ValueError(
            f"poisson mask: cannot reach acceleration {accel} on a {ny}x{nx} grid with a "
            f"{calib[0]}x{calib[1]} calibration block (closest: {accel + best_err if best is not None else 'none'})"
        )
    return np.abs(best).astype(np.float32)
