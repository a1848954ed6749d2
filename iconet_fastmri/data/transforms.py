"""Per-slice CPU transform for :class:`fastmri.data.SliceDataset`.

It turns one raw fastMRI slice into a fixed-size, batchable sample; the
FFT-heavy simulation then runs batched on the device
(:meth:`iconet_fastmri.physics.acquisition.Acquisition.simulate`).

Steps (per slice, in a data loader worker):

1. validate the k-space (dimensions, complex dtype, finite, not all zero);
2. per-coil centred inverse FFT (:func:`iconet_fastmri.physics.fft.ifft2c`);
3. complex centre crop to the HR grid (default 320x320), with fastMRI's
   ``center_crop`` convention (start ``(N - n) // 2``), which is how the
   files' ``reconstruction_esc`` / ``reconstruction_rss`` are defined; the
   RSS of these images is the HR target;
4. optionally (training) the origin of a random HR patch aligned to the scale
   (``IconetSample.patch``); the patch is cut on the device *after* the whole
   slice is degraded (:mod:`iconet_fastmri.models.patches`), so it sees the
   whole slice's aliasing, targets and normalisation scale;
5. draw the undersampling mask on the LR grid ``(H/s, W/s)`` with the run's
   :class:`~iconet_fastmri.physics.acquisition.Acquisition`: with the seed
   :func:`iconet_fastmri.physics.masks.mask_seed` ``(fname, slice)`` when
   ``use_seed`` (validation/test: identical every epoch, run and rank), or
   from the mask function's RNG (training).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..physics.acquisition import Acquisition
from .validation import kspace_magnitude_problem
from ..physics.operators import rss
from ..physics.fft import ifft2c
from ..physics.masks import MASK_SEED_RULES, eval_mask_seed

__all__ = [
    "IconetSample",
    "IconetDataTransform",
    "check_kspace",
    "center_crop_2d",
    "file_target",
    "hr_coil_images",
    "hr_target",
]


class IconetSample(NamedTuple):
    """One slice, ready to batch.

    Attributes:
        hr_images: HR per-coil complex images ``(C, H, W)`` complex64 (C = 1 for singlecoil).
        mask: LR-grid sampling mask ``(1, H/s, W/s)`` float32, 1 = acquired.
        target: the file's own target cropped to the HR grid ``(H, W)`` float32,
            or an empty tensor when the file has none (test/challenge files).
        fname: file name (no folder).
        slice_num: slice index in the volume.
        max_value: the volume's target maximum (file attribute ``max``; NaN if absent).
        num_low_frequencies: fully sampled centre columns of the mask.
        patch: ``(4,)`` int64 ``(r0, c0, ph, pw)``, the training patch on the HR grid
            (``(0, 0, H, W)``: the whole slice; ``None``: the whole slice, too).
        maps: precomputed coil maps on the LR grid ``(C, h, w)`` complex64 (ESPIRiT maps that a shard
            set carries, for ``coil_maps: espirit``), or ``None``.
        compact: ``(lr_kspace (C, h, w), [stage targets (1, ·, ·)...])`` of a compact shard set, which
            stores these instead of the HR images (``hr_images`` is then ``(C, 0, 0)``), or ``None``.
    """

    hr_images: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    fname: str
    slice_num: int
    max_value: float
    num_low_frequencies: int
    patch: Optional[torch.Tensor] = None
    maps: Optional[torch.Tensor] = None
    compact: Optional[Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]] = None


def check_kspace(kspace: Any, fname: str, slice_num: int, key: str = "kspace") -> np.ndarray:
    """Validate one raw k-space slice; a clear error names the file, slice and problem.

    Returns:
        The k-space as a complex ``(C, H, W)`` array (a singlecoil slice gets C = 1).
    """
    where = f"{fname!s}, slice {slice_num}, dataset {key!r}"
    if kspace is None:
        raise ValueError(f"{where}: no k-space")
    kspace = np.asarray(kspace)
    if not np.iscomplexobj(kspace):
        raise TypeError(f"{where}: k-space must be complex, got dtype {kspace.dtype}")
    if kspace.ndim == 2:
        kspace = kspace[None]
    elif kspace.ndim != 3:
        raise ValueError(
            f"{where}: k-space slice must be (H, W) singlecoil or (coils, H, W) multicoil, "
            f"got shape {kspace.shape}"
        )
    finite = np.isfinite(kspace)
    if not finite.all():
        bad = int((~finite).sum())
        kind = "NaN" if np.isnan(kspace).any() else "Inf"
        raise ValueError(f"{where}: k-space holds {bad} non-finite ({kind}) values")
    if not np.any(kspace):
        raise ValueError(f"{where}: k-space is all zeros")
    problem = kspace_magnitude_problem(kspace)  # finite but so large that float32 sums overflow
    if problem:
        raise ValueError(f"{where}: {problem}")
    return kspace


def center_crop_2d(x: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Centre crop of the last two dims, fastMRI convention (start ``(N - n) // 2``)."""
    h, w = x.shape[-2], x.shape[-1]
    ch, cw = shape
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} is larger than the image {h}x{w}")
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    return x[..., r0 : r0 + ch, c0 : c0 + cw]


def hr_coil_images(
    kspace: Any,
    hr_crop: Sequence[int],
    pad_if_smaller: bool = False,
    fname: str = "",
    slice_num: int = 0,
) -> Tuple[torch.Tensor, bool]:
    """The HR grid rule: raw k-space slice -> HR per-coil complex images ``(C, H, W)``.

    The one rule that training, inference, evaluation and figures share:
    checked k-space (:func:`check_kspace`), per-coil centred inverse FFT,
    optional centred zero-padding of images smaller than ``hr_crop``
    (``pad_if_smaller``), then the fastMRI centre crop to ``hr_crop``. The HR
    target is :func:`~iconet_fastmri.physics.operators.rss` of the result
    (:func:`hr_target`).

    Returns:
        ``(images, padded)``: complex64 ``(C, H, W)`` and whether padding was applied.
    """
    kspace = check_kspace(kspace, fname, slice_num)
    images = ifft2c(torch.from_numpy(kspace.astype(np.complex64, copy=False)))
    h, w = images.shape[-2:]
    crop = (int(hr_crop[0]), int(hr_crop[1]))
    padded = False
    if pad_if_smaller and (crop[0] > h or crop[1] > w):
        ph, pw = max(0, crop[0] - h), max(0, crop[1] - w)
        images = torch.nn.functional.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = images.shape[-2:]
        padded = True
    if crop[0] > h or crop[1] > w:
        raise ValueError(
            f"{fname}, slice {slice_num}: hr_crop {crop[0]}x{crop[1]} is larger "
            f"than the image {h}x{w} reconstructed from its k-space"
            + ("" if pad_if_smaller else " (pad_if_smaller pads such images)")
        )
    return center_crop_2d(images, crop), padded


def file_target(target: Optional[Any], hr_crop: Sequence[int], padded: bool = False) -> torch.Tensor:
    """The file's own target (``reconstruction_esc`` / ``reconstruction_rss``) on the HR grid.

    Centre-cropped to ``hr_crop``; an empty tensor when there is none, when it
    is smaller than the grid, or when the image was zero-padded (``padded``):
    then it is not comparable with our HR target.
    """
    if target is None or padded:
        return torch.empty(0)
    target_t = torch.from_numpy(np.asarray(target, dtype=np.float32))
    if target_t.shape[-2] >= hr_crop[0] and target_t.shape[-1] >= hr_crop[1]:
        return center_crop_2d(target_t, (int(hr_crop[0]), int(hr_crop[1])))
    return torch.empty(0)


def hr_target(
    kspace: Any, hr_crop: Sequence[int], pad_if_smaller: bool = False, fname: str = "", slice_num: int = 0
) -> torch.Tensor:
    """HR target ``(H, W)`` float32 of one raw k-space slice: RSS of :func:`hr_coil_images`.

    Equals the file's ``reconstruction_esc`` / ``reconstruction_rss`` (to
    float32 rounding) where fastMRI computed those on the same grid.
    """
    images, _ = hr_coil_images(kspace, hr_crop, pad_if_smaller, fname, slice_num)
    return rss(images[None])[0, 0]


class IconetDataTransform:
    """``transform`` for :class:`fastmri.data.SliceDataset` producing :class:`IconetSample`.

    Args:
        acquisition: the run's acquisition model; its scale gives the LR grid
            ``hr_crop / s`` and its mask generator draws the masks there.
        hr_crop: HR grid ``(H, W)``; fastMRI's reconstructions are 320x320.
        use_seed: draw masks with the per-(file, slice) seed (validation/test).
        patch_size: optional random HR patch ``(ph, pw)`` cut from the HR grid
            for training (multiples of the scale); ignored when ``use_seed``.
        seed: seed of the patch-position RNG (reseeded per worker like the masks).
        pad_if_smaller: zero-pad (in the image domain, centred) images narrower or
            shorter than ``hr_crop`` instead of raising. fastMRI brain volumes
            come in several widths, some below 320; without this they are an error.
        mask_seed_rule: how ``use_seed`` masks are seeded: ``"slice"`` (ours, a
            mask per slice from ``crc32("<fname>/<slice>")``) or ``"volume"``
            (fastMRI's ``tuple(map(ord, fname))``: one mask per volume, so
            numbers compare with fastMRI-style published results).
    """

    def __init__(
        self,
        acquisition: Acquisition,
        hr_crop: Sequence[int] = (320, 320),
        use_seed: bool = True,
        patch_size: Optional[Sequence[int]] = None,
        seed: Optional[int] = None,
        pad_if_smaller: bool = False,
        mask_seed_rule: str = "slice",
    ) -> None:
        if mask_seed_rule not in MASK_SEED_RULES:
            raise ValueError(f"unknown mask_seed_rule {mask_seed_rule!r}; choose one of {MASK_SEED_RULES}")
        self.mask_seed_rule = mask_seed_rule
        self.pad_if_smaller = pad_if_smaller
        if not isinstance(acquisition, Acquisition):
            raise TypeError(f"IconetDataTransform needs an Acquisition, got {type(acquisition).__name__}")
        self.acquisition = acquisition
        self.hr_crop = (int(hr_crop[0]), int(hr_crop[1]))
        self.lr_shape = acquisition.lr_shape(self.hr_crop)
        self.scale = acquisition.scale
        self.use_seed = use_seed
        self.patch_size: Optional[Tuple[int, int]] = None
        if patch_size is not None:
            ph, pw = int(patch_size[0]), int(patch_size[1])
            acquisition.lr_shape((ph, pw))
            if ph > self.hr_crop[0] or pw > self.hr_crop[1]:
                raise ValueError(f"patch_size {ph}x{pw} is larger than hr_crop {self.hr_crop}")
            self.patch_size = (ph, pw)
        self.rng = np.random.RandomState(seed)

    def reseed(self, seed: int) -> None:
        """Reseed the training randomness (mask and patch position) of this worker."""
        self.rng.seed(seed & 0xFFFFFFFF)
        self.acquisition.reseed(seed)

    def __call__(
        self,
        kspace: np.ndarray,
        mask: Optional[np.ndarray],
        target: Optional[np.ndarray],
        attrs: Dict[str, Any],
        fname: str,
        slice_num: int,
    ) -> IconetSample:
        hr_images, padded = hr_coil_images(kspace, self.hr_crop, self.pad_if_smaller, fname, slice_num)
        return self.from_images(hr_images, file_target(target, self.hr_crop, padded), attrs, fname, slice_num)

    def from_images(
        self,
        hr_images: torch.Tensor,
        target: torch.Tensor,
        attrs: Optional[Dict[str, Any]],
        fname: str,
        slice_num: int,
        maps: Optional[torch.Tensor] = None,
        compact: Optional[Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]] = None,
    ) -> IconetSample:
        """The sample of a slice whose HR-grid coil images (:func:`hr_coil_images`) and target
        (:func:`file_target`) are known: what ``__call__`` does after the crop.

        Shards (:mod:`iconet_fastmri.data.shards`) store exactly these two and
        call this, so a slice read from shards is the HDF5 path's sample.
        """
        H, W = hr_images.shape[-2:] if compact is None else compact[1][-1].shape[-2:]
        patch = (0, 0, int(H), int(W))
        if self.patch_size is not None and not self.use_seed:
            ph, pw = self.patch_size
            s = self.scale
            r0 = s * self.rng.randint(0, (H - ph) // s + 1)
            c0 = s * self.rng.randint(0, (W - pw) // s + 1)
            patch = (int(r0), int(c0), ph, pw)

        seed = eval_mask_seed(fname, slice_num, self.mask_seed_rule) if self.use_seed else None
        lr_mask, num_low = self.acquisition.draw_mask(self.lr_shape, seed=seed)

        max_value = float(attrs.get("max", float("nan"))) if attrs else float("nan")
        return IconetSample(
            hr_images=hr_images.contiguous(),
            mask=lr_mask.reshape(1, *self.lr_shape).contiguous(),
            target=target.contiguous(),
            fname=str(fname),
            slice_num=int(slice_num),
            max_value=max_value,
            num_low_frequencies=int(num_low),
            patch=torch.tensor(patch, dtype=torch.int64),
            maps=maps,
            compact=compact,
        )
