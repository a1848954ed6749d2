"""Coil sensitivity maps and the SENSE forward model ``A = M · F · T · S`` with its adjoint.

* :func:`estimate_maps_rss`: the fast on-device estimate, batched in torch:
  the fully sampled centre (auto-calibration lines) of the *acquired LR*
  k-space, zero elsewhere, transformed to low-resolution coil images and
  normalised by their root-sum-of-squares (as VarNet-style models
  initialise). ``Σ_c |S_c|² = 1`` wherever the coil images are not zero. The
  maps carry the object's phase; it cancels in ``S Sᴴ`` and in SENSE
  combination, which is what they are used for.
* :func:`espirit_maps`: ESPIRiT maps (``sigpy.mri.app.EspiritCalib``) from
  the same calibration region, on the CPU; slow (measured: 0.2 s for 8 coils
  at 64x64, 12.8 s for 15 coils at 160x160 on 2 CPU cores, against 0.07 s for
  :func:`estimate_maps_rss` on a batch of 8 such slices), so for training precompute them and
  cache them (:func:`espirit_maps_cached`, in a cache folder keyed by the
  k-space content, never beside the data).
* :class:`SenseOperator`: ``A x = M ⊙ F(T(S x))`` for an image ``x`` on a
  grid ``(H, W)``: coil expansion ``S`` (maps on that grid), centred FFT
  ``F``, intensity-preserving truncation ``T`` to the LR grid ``(h, w)``
  (identity when the grids agree) and the sampling mask ``M``; its adjoint
  ``Aᴴ y = Σ_c conj(S_c) F⁻¹(Tᴴ(M ⊙ y_c))``. Single-coil data is ``S = 1``.
* :func:`sense_combine`: ``Σ_c conj(S_c) x_c``, the coil combination that
  turns multi-coil images into one complex image.
* :func:`maps_on_grid`: maps moved to a finer image grid (sinc interpolation,
  renormalised to ``Σ_c |S_c|² = 1``), for DC of a later ICONet stage or of
  the SR output.
* :func:`complex_targets`: the complex (phase-carrying) images a complex-mode
  network should output on each stage grid: the HR coil images truncated in
  k-space to that grid, SENSE-combined for multi-coil data; their magnitude
  is the RSS target for single-coil data and close to it for multi-coil data.
* :func:`sense_data_consistency`: data consistency of a coil-combined complex
  image through ``A``: ``x + Aᴴ(w · (y − A x)) / a²`` with ``w = 1`` (hard) or
  ``λ / (1 + λ)`` (soft) and ``a`` the truncation's intensity factor. It is
  DC in coil k-space followed by SENSE combination: the coil images ``S x``
  get the measured samples (hard) where the mask is 1, and ``Sᴴ`` combines
  them. For single-coil data (``maps=None``) this is plain k-space DC (tested
  against an independent implementation); for multi-coil
  data ``A`` of the result equals the measurement only as far as the
  measurement lies in the range of the maps (``S Sᴴ`` is a projection).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .fft import fft2c, ifft2c
from .operators import LinearOperator, PhaseEncodeOversampling, crop_kspace, intensity_factor, pad_kspace, rss, sinc_upsample

__all__ = [
    "calibration_region",
    "estimate_maps_rss",
    "calibration_images",
    "normalise_maps",
    "espirit_maps",
    "espirit_maps_cached",
    "estimate_maps_espirit",
    "sense_combine",
    "maps_on_grid",
    "sense_data_consistency",
    "complex_targets",
    "SenseOperator",
]


def calibration_region(mask: torch.Tensor) -> torch.Tensor:
    """The fully sampled centre block of LR masks ``(B, 1, h, w)``: 1 inside it, 0 outside.

    Grown from the centre sample while whole rows or columns of the block are
    sampled: for fastMRI's 1D masks the full-height band of centre columns,
    for 2D masks (Poisson, Gaussian) their calibration rectangle.
    """
    out = torch.zeros_like(mask, dtype=torch.float32)
    m_all = (mask > 0).cpu()
    h, w = mask.shape[-2:]
    for i in range(mask.shape[0]):
        m = m_all[i, 0]
        r0 = r1 = h // 2
        c0 = c1 = w // 2
        if not bool(m[r0, c0]):
            raise ValueError(f"mask {i} does not sample the k-space centre: no calibration region")
        grown = True
        while grown:
            grown = False
            if c0 > 0 and bool(m[r0 : r1 + 1, c0 - 1].all()):
                c0, grown = c0 - 1, True
            if c1 < w - 1 and bool(m[r0 : r1 + 1, c1 + 1].all()):
                c1, grown = c1 + 1, True
            if r0 > 0 and bool(m[r0 - 1, c0 : c1 + 1].all()):
                r0, grown = r0 - 1, True
            if r1 < h - 1 and bool(m[r1 + 1, c0 : c1 + 1].all()):
                r1, grown = r1 + 1, True
        out[i, 0, r0 : r1 + 1, c0 : c1 + 1] = 1
    return out


def estimate_maps_rss(kspace: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sensitivity maps from the calibration region of acquired k-space, normalised by their RSS.

    Args:
        kspace: centred acquired k-space ``(B, C, h, w)`` complex (zero where not sampled).
        mask: its sampling mask ``(B, 1, h, w)``; its fully sampled centre is used (:func:`calibration_region`).
        eps: floor of the RSS (maps are 0 where the coil images are).

    Returns:
        ``(B, C, h, w)`` complex maps with ``Σ_c |S_c|² = 1`` where the RSS exceeds ``eps``.
    """
    return normalise_maps(calibration_images(kspace, mask), eps)


def calibration_images(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Low-resolution coil images ``(B, C, h, w)`` of the calibration region of acquired k-space."""
    return ifft2c(kspace * calibration_region(mask).to(kspace.device))


def normalise_maps(images: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Coil images divided by their RSS over coils: ``Σ_c |S_c|² = 1`` where the RSS exceeds ``eps``, else 0."""
    norm = rss(images, dim=1, keepdim=True)
    return torch.where(norm > eps, images / norm.clamp_min(eps), torch.zeros_like(images))


#: sigpy's ESPIRiT kernel width (``EspiritCalib(kernel_width=6)``).
ESPIRIT_KERNEL = 6
#: A map set with ``Σ_c |S_c|²`` below this inside the object has a hole there (ESPIRiT's maps are ~1 on signal).
ESPIRIT_MIN_ENERGY = 0.5


def espirit_maps(kspace: np.ndarray, calib_width: int, thresh: float = 0.02, crop: float = 0.95,
                 where: str = "", check: bool = True) -> np.ndarray:
    """ESPIRiT maps (``sigpy.mri.app.EspiritCalib``) of one slice's acquired k-space ``(C, h, w)``.

    ``calib_width`` is the side of the centred calibration square (the fully
    sampled centre). Maps are zero where ESPIRiT finds no signal (``crop``).

    Refused (``ValueError`` naming ``where`` and the numbers), never silent holes:

    * a calibration region narrower than twice the 6x6 kernel: its calibration
      matrix is too small to find the coils' subspace (measured on the 64x64
      brain phantom with 8 coils: 10 lines gave maps that vanish over 97 % of
      the object, projector error 0.99; 12 lines 1.8 %, 0.14; 14 lines none, 0.02);
    * maps whose ``Σ_c |S_c|²`` falls below 0.5 anywhere inside the object (the
      pixels above 20 % of the maximum of the calibration region's low-resolution
      RSS image; a slice of noise alone, whose maximum is below 5x its 10th percentile, has none),
      which is what a too-small region does near that limit.

    ``check=False`` skips both (timing ESPIRiT on random data, ``scripts/benchmark.py``).
    """
    from sigpy.mri.app import EspiritCalib

    kspace = np.asarray(kspace, dtype=np.complex64)
    calib_width = int(calib_width)
    label = f"{where}: " if where else ""
    if check and calib_width < 2 * ESPIRIT_KERNEL:
        raise ValueError(
            f"{label}ESPIRiT needs a calibration region of at least {2 * ESPIRIT_KERNEL} fully sampled lines for its "
            f"{ESPIRIT_KERNEL}x{ESPIRIT_KERNEL} kernel; this one has {calib_width} (its maps would vanish over "
            f"parts of the object): acquire more centre lines (center_fractions) or use coil_maps rss"
        )
    maps = EspiritCalib(kspace, calib_width=calib_width, thresh=thresh, crop=crop,
                        show_pbar=False).run().astype(np.complex64)
    if not check:
        return maps
    h, w = kspace.shape[-2:]
    square = (min(calib_width, h), min(calib_width, w))  # centred as sigpy's and the truncation's (N//2 - n//2)
    block = pad_kspace(crop_kspace(torch.from_numpy(kspace), square), (h, w))  # a constant factor: thresholds are relative
    low = rss(ifft2c(block)[None])[0, 0].numpy()
    # The object: above 20 % of the maximum, where there is one. A slice of noise alone (a volume's
    # edge) has none, and ESPIRiT rightly gives it no maps: its maximum is ~2x its 10th percentile
    # (measured, 8 coils), an object's 40-70x on the phantoms; below 5x no pixel counts as object.
    has_object = low.max() > 5 * np.percentile(low, 10)
    inside = (low > 0.2 * low.max()) & has_object
    energy = (np.abs(maps) ** 2).sum(0)
    holes = inside & (energy < ESPIRIT_MIN_ENERGY)
    if holes.any():
        raise ValueError(
            f"{label}ESPIRiT maps from a {calib_width}-line calibration region vanish over {holes.mean() / inside.mean():.1%} "
            f"of the object (min Σ|S|² there {energy[inside].min():.2g} < {ESPIRIT_MIN_ENERGY}): the region is too small "
            f"for this coil array; acquire more centre lines or use coil_maps rss"
        )
    return maps


def estimate_maps_espirit(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ESPIRiT maps ``(B, C, h, w)`` of a batch of acquired LR k-space, slice by slice on the CPU.

    The same interface as :func:`estimate_maps_rss` (``coil_maps: espirit``). The
    calibration square's side is the smaller side of each mask's fully sampled
    centre (:func:`calibration_region`); coils that are all zero (a batch's coil
    padding) get zero maps. Slow (sigpy, CPU): shards can carry them precomputed
    (:mod:`iconet_fastmri.data.shards`).
    """
    region = calibration_region(mask)
    out = torch.zeros(kspace.shape, dtype=torch.complex64)
    k_all = kspace.detach().to("cpu", torch.complex64).numpy()
    for i in range(kspace.shape[0]):
        calib = min(int(region[i, 0].any(dim=-1).sum()), int(region[i, 0].any(dim=-2).sum()))
        coils = np.flatnonzero(np.abs(k_all[i]).reshape(k_all.shape[1], -1).max(axis=1) > 0)
        maps = espirit_maps(k_all[i][coils], calib, where=f"batch slice {i}")
        out[i, torch.from_numpy(coils)] = torch.from_numpy(maps)
    return out.to(kspace.device)


def espirit_maps_cached(
    kspace: np.ndarray, calib_width: int, cache_dir: Union[str, Path], thresh: float = 0.02, crop: float = 0.95
) -> np.ndarray:
    """:func:`espirit_maps` through a cache folder keyed by the k-space bytes and the settings.

    The cache holds plain ``.npy`` arrays (loaded with ``allow_pickle=False``),
    written atomically, in ``cache_dir`` (never in the data folder).
    """
    from ..io import atomic_write

    kspace = np.ascontiguousarray(kspace, dtype=np.complex64)
    digest = hashlib.sha256(kspace.tobytes() + f"{kspace.shape}|{calib_width}|{thresh}|{crop}".encode()).hexdigest()
    path = Path(cache_dir) / f"espirit_{digest[:32]}.npy"
    if path.is_file():
        maps = np.load(path, allow_pickle=False)
        if maps.shape == kspace.shape and maps.dtype == np.complex64:
            return maps
    maps = espirit_maps(kspace, calib_width, thresh, crop)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, maps, allow_pickle=False)

    atomic_write(path, write)
    return maps


def sense_combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``Σ_c conj(S_c) x_c``: ``(B, C, H, W)`` coil images -> ``(B, 1, H, W)`` complex image."""
    return (maps.conj() * coil_images).sum(dim=1, keepdim=True)


class SenseOperator(LinearOperator):
    """``A = M · F · T · S`` and ``Aᴴ`` (see the module docstring).

    Args:
        maps: sensitivities on the image grid ``(B, C, H, W)`` complex, or ``None`` for single-coil (``S = 1``).
        mask: LR sampling mask broadcastable to ``(B, C, h, w)``.
        lr_shape: the LR grid ``(h, w)`` of the measurements (default: the image grid).
        image_shape: the image grid ``(H, W)``; needed only without maps when it differs from ``lr_shape``.
    """

    def __init__(self, maps: Optional[torch.Tensor], mask: torch.Tensor,
                 lr_shape: Optional[Sequence[int]] = None, image_shape: Optional[Sequence[int]] = None) -> None:
        self.maps = maps
        self.mask = mask
        self.lr_shape = None if lr_shape is None else (int(lr_shape[0]), int(lr_shape[1]))
        grid = maps.shape[-2:] if maps is not None else image_shape
        self.image_shape = None if grid is None else (int(grid[0]), int(grid[1]))

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.maps is None else self.maps * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 1, H, W)`` -> measured k-space ``(B, C, h, w)``."""
        k = fft2c(self._expand(x))
        if self.lr_shape is not None and tuple(k.shape[-2:]) != self.lr_shape:
            k = crop_kspace(k, self.lr_shape)
        return k * self.mask

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Measured k-space ``(B, C, h, w)`` -> image ``(B, 1, H, W)``."""
        k = y * self.mask
        if self.image_shape is not None and tuple(k.shape[-2:]) != self.image_shape:
            k = pad_kspace(k, self.image_shape)
        images = ifft2c(k)
        return images if self.maps is None else sense_combine(images, self.maps)


def maps_on_grid(maps: torch.Tensor, shape: Sequence[int], eps: float = 1e-12) -> torch.Tensor:
    """Sensitivity maps ``(B, C, h, w)`` on the image grid ``shape`` (sinc interpolation, ``Σ_c |S_c|² = 1`` again)."""
    shape = (int(shape[0]), int(shape[1]))
    if tuple(maps.shape[-2:]) == shape:
        return maps
    return normalise_maps(sinc_upsample(maps, shape), eps)


def sense_data_consistency(
    image: torch.Tensor,
    measured: torch.Tensor,
    mask: torch.Tensor,
    maps: Optional[torch.Tensor] = None,
    lam: Optional[torch.Tensor] = None,
    encoding: Optional[PhaseEncodeOversampling] = None,
) -> torch.Tensor:
    """Data consistency of a complex image through the SENSE model ``A = M · F · T · S``.

    Args:
        image: coil-combined complex image ``(B, 1, H, W)``, on the LR grid of the
            measurements or a finer one.
        measured: centred measured LR k-space ``(B, C, h, w)`` (zero where not sampled).
        mask: sampling mask broadcastable to ``(B, C, h, w)``, 1 where acquired.
        maps: sensitivities ``(B, C, h', w')`` on any grid (moved to the image's
            with :func:`maps_on_grid`), ``Σ_c |S_c|² = 1``; ``None`` for single-coil.
        lam: ``None`` for hard DC, else soft DC with weight ``λ / (1 + λ)``.
        encoding: for a real scan whose phase encode is oversampled: its samples
            ``E`` (:class:`~.operators.PhaseEncodeOversampling`, which holds the
            mask); ``measured`` ``(B, C, h, w_k)`` are then its samples less those of
            what lies outside the model's field of view, and ``A = E · T · S``.

    Returns:
        The corrected image ``(B, 1, H, W)`` (see the module docstring).
    """
    grid = (image.shape[-2], image.shape[-1])
    lr = encoding.grid if encoding is not None else (measured.shape[-2], measured.shape[-1])
    if maps is not None:
        maps = maps_on_grid(maps.to(image.dtype), grid)
    weight = 1.0 if lam is None else lam / (1.0 + lam)
    a2 = intensity_factor(lr, grid) ** 2 if grid != lr else 1.0
    if encoding is None:
        op = SenseOperator(maps, mask.to(torch.float32), lr_shape=lr, image_shape=grid)
        return image + op.adjoint(weight * (measured - op.forward(image))) / a2
    op = SenseOperator(maps, torch.ones(()), lr_shape=lr, image_shape=grid)
    residual = encoding.adjoint(weight * (measured - encoding.forward(op.forward(image))))
    return image + op.adjoint(residual) / a2


def complex_targets(hr_images: torch.Tensor, grids: Sequence[Sequence[int]],
                    maps: Optional[torch.Tensor] = None) -> list:
    """Complex images ``(B, 1, h, w)`` of ``hr_images`` ``(B, C, H, W)`` on each grid in ``grids``.

    Each is ``F⁻¹ T F`` of the coil images (the intensity-preserving k-space
    truncation to that grid, the identity on the HR grid), combined with
    ``conj(maps)`` moved to that grid when ``C > 1`` (``maps`` required then).
    """
    coils = hr_images.shape[1]
    if coils > 1 and maps is None:
        raise ValueError(f"complex targets of {coils}-coil images need coil maps")
    full = (hr_images.shape[-2], hr_images.shape[-1])
    kspace = fft2c(hr_images)
    out = []
    for grid in grids:
        grid = (int(grid[0]), int(grid[1]))
        images = hr_images if grid == full else ifft2c(crop_kspace(kspace, grid))
        out.append(images if coils == 1 else sense_combine(images, maps_on_grid(maps.to(images.dtype), grid)))
    return out
