"""Per-volume NMSE / PSNR / SSIM exactly as :mod:`fastmri.evaluate` computes them.

fastMRI's conventions: metrics are computed over whole volumes ``(S, H, W)``;
PSNR and SSIM use the volume's target maximum as data range; SSIM is the mean
over slices (window 7). We call fastmri's own functions (not a copy), and
only take ``.item()`` of SSIM's shape-(1,) array, which ``float()`` rejects
under numpy 2.4.

:class:`VolumeAccumulator` gathers slices as they stream in (one or two
volumes in memory at a time) and scores a volume as soon as all its slices
have arrived.

Besides fastMRI's three numbers each scored volume carries a background
diagnostic (:func:`region_metrics`): PSNR and SSIM inside the object and in
the background, the background's signed bias, and the fraction of negative
prediction pixels. A model that paints a negative bias over the background
shows up there while fastMRI's whole-volume numbers barely move.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
from fastmri import evaluate
from skimage.metrics import structural_similarity

__all__ = [
    "volume_metrics",
    "region_metrics",
    "object_mask",
    "OBJECT_THRESHOLD",
    "REGION_METRIC_NAMES",
    "VolumeAccumulator",
    "METRIC_NAMES",
    "summarize",
    "merge_rank_results",
]

METRIC_NAMES = ("nmse", "psnr", "ssim")
REGION_METRIC_NAMES = (
    "psnr_object",
    "ssim_object",
    "psnr_background",
    "ssim_background",
    "background_bias",
    "negative_fraction",
)

#: Object = target above this fraction of the target volume's maximum: the rule of
#: the DC analysis in docs/MULTICOIL.md ("object = target > 10 % of its maximum").
OBJECT_THRESHOLD = 0.1


def _as_volumes(target: np.ndarray, pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(S, H, W)`` arrays of the same shape (a single slice gets S = 1), as they are otherwise."""
    target, pred = np.asarray(target), np.asarray(pred)
    if target.ndim == 2:
        target, pred = target[None], pred[None]
    if target.shape != pred.shape:
        raise ValueError(f"target shape {target.shape} and prediction shape {pred.shape} differ")
    return target, pred


def volume_metrics(target: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> Dict[str, float]:
    """NMSE, PSNR and SSIM of one volume, by fastmri.evaluate.

    Args:
        target: ``(S, H, W)`` ground truth.
        pred: ``(S, H, W)`` prediction.
        maxval: data range; default the target volume's maximum (fastMRI's choice).
    """
    # No dtype change: fastMRI scores the float32 arrays of the files as they are.
    target, pred = _as_volumes(target, pred)
    # maxval None: fastmri's own default (the target volume's max, in its dtype).
    return {
        "nmse": float(np.asarray(evaluate.nmse(target, pred)).item()),
        "psnr": float(np.asarray(evaluate.psnr(target, pred, maxval=maxval)).item()),
        "ssim": float(np.asarray(evaluate.ssim(target, pred, maxval=maxval)).reshape(-1)[0]),
    }


def object_mask(target: np.ndarray, threshold: float = OBJECT_THRESHOLD) -> np.ndarray:
    """Boolean object mask of a target volume: ``target > threshold * target.max()``.

    The maximum is the whole volume's (the same number fastMRI uses as data
    range), so every slice of a volume is split by one level; the background is
    the complement. An all-zero (or non-positive) volume has no object.
    """
    target = np.asarray(target)
    peak = float(target.max()) if target.size else 0.0
    if not peak > 0:
        return np.zeros(target.shape, dtype=bool)
    return target > threshold * peak


def _region_psnr(err2: np.ndarray, region: np.ndarray, maxval: float) -> float:
    mse = float(err2[region].mean())
    return float("inf") if mse == 0 else float(10.0 * np.log10(maxval**2 / mse))


def region_metrics(
    target: np.ndarray,
    pred: np.ndarray,
    maxval: Optional[float] = None,
    threshold: float = OBJECT_THRESHOLD,
) -> Dict[str, float]:
    """Background diagnostic of one volume ``(S, H, W)``; the object is :func:`object_mask`.

    Quantities (``maxval`` defaults to the target volume's maximum, fastMRI's data range):

    * ``psnr_object`` / ``psnr_background``: ``10 log10(maxval² / MSE)`` with the MSE taken over
      the region's pixels only. The data range stays the *volume's* maximum, not the region's, so
      the background number is well defined on a near-zero target (its own maximum or an NMSE
      normalised by its near-zero energy would not be): it is the background error relative to
      the image's peak, and on the whole volume it reproduces fastMRI's PSNR.
    * ``ssim_object`` / ``ssim_background``: the SSIM *map* of each slice, computed exactly as
      fastMRI's SSIM (skimage, window 7, same data range), averaged over the region's pixels of
      the whole volume. Like fastMRI's mean, the map's 3-pixel border (where skimage's map is not
      a full window) is left out. Averaging the map over a region, rather than SSIM of a cropped
      region, keeps every window's context; with a mask of every pixel it equals fastMRI's SSIM.
    * ``background_bias``: the mean of ``pred - target`` over the background, in units of
      ``maxval`` (signed: a negative background painted by the model reads negative).
    * ``negative_fraction``: the fraction of the prediction's pixels below zero (all pixels;
      the same definition as :mod:`iconet_fastmri.evaluation`).

    A region with no pixels (an all-background volume, or a target filling the whole field of
    view) leaves its keys out rather than reporting NaN; a region reproduced exactly has PSNR
    ``inf``, as fastMRI's PSNR would.
    """
    target, pred = _as_volumes(target, pred)
    negative = float(np.count_nonzero(pred < 0)) / max(pred.size, 1)
    out: Dict[str, float] = {"negative_fraction": negative}
    maxval = float(target.max()) if maxval is None else float(maxval)
    if not maxval > 0:
        return out
    obj = object_mask(target, threshold)
    background = ~obj
    diff = pred.astype(np.float64) - target.astype(np.float64)
    err2 = diff**2
    # SSIM maps as fastmri.evaluate.ssim computes them (same arrays, same data range).
    ssim_map = np.stack(
        [
            structural_similarity(target[i], pred[i], data_range=maxval, full=True)[1]
            for i in range(target.shape[0])
        ]
    ).astype(np.float64)
    pad = (7 - 1) // 2  # skimage's default window 7; its mean ignores this border
    interior = np.zeros(target.shape, dtype=bool)
    interior[:, pad : target.shape[1] - pad, pad : target.shape[2] - pad] = True
    for name, region in (("object", obj), ("background", background)):
        if not region.any():
            continue
        out[f"psnr_{name}"] = _region_psnr(err2, region, maxval)
        inner = region & interior
        if inner.any():
            out[f"ssim_{name}"] = float(ssim_map[inner].mean())
    if background.any():
        out["background_bias"] = float(diff[background].mean() / maxval)
    return out


class VolumeAccumulator:
    """Collect per-slice images and score whole volumes with :func:`volume_metrics`
    (fastMRI's numbers, unchanged) and :func:`region_metrics` (the background diagnostic).

    Args:
        expected_slices: optional ``{fname: number of slices}``; a volume is
            scored (and its images freed) as soon as it is complete. Volumes
            still open at :meth:`finalize` are scored with the slices seen.
    """

    def __init__(self, expected_slices: Optional[Mapping[str, int]] = None) -> None:
        self.expected = dict(expected_slices or {})
        self.open: Dict[str, Dict[int, Tuple[np.ndarray, Dict[str, np.ndarray]]]] = {}
        self.results: Dict[str, Dict[str, float]] = {}

    def add(self, fname: str, slice_num: int, target: np.ndarray, preds: Mapping[str, np.ndarray]) -> None:
        """Add one slice: its target and one prediction per method (e.g. ``{"": sr, "bicubic": up}``)."""
        if fname in self.results:
            return  # a volume sampler may repeat samples to even out ranks
        slices = self.open.setdefault(fname, {})
        slices[int(slice_num)] = (np.asarray(target, np.float32), {k: np.asarray(v, np.float32) for k, v in preds.items()})
        if self.expected.get(fname) == len(slices):
            self._score(fname)

    def _score(self, fname: str) -> None:
        slices = self.open.pop(fname)
        order = sorted(slices)
        target = np.stack([slices[i][0] for i in order])
        out: Dict[str, float] = {"num_slices": float(len(order))}
        for method in slices[order[0]][1]:
            pred = np.stack([slices[i][1][method] for i in order])
            values = volume_metrics(target, pred)
            values.update(region_metrics(target, pred))
            for name, value in values.items():
                out[f"{name}_{method}" if method else name] = value
        self.results[fname] = out

    def partial(self) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Dict[int, Any]]]:
        """``(scored volumes, open volumes' slices)``, unscored: what a DDP rank sends to :func:`merge_rank_results`."""
        return self.results, self.open

    def finalize(self) -> Dict[str, Dict[str, float]]:
        """Score any open volumes and return ``{fname: {metric: value}}``."""
        for fname in list(self.open):
            self._score(fname)
        return self.results


def summarize(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """Mean of each metric over volumes (each volume counted once)."""
    if not results:
        return {}
    keys: List[str] = sorted({k for r in results.values() for k in r if k != "num_slices"})
    return {k: float(np.mean([r[k] for r in results.values() if k in r])) for k in keys}


def merge_rank_results(
    parts: Iterable[Tuple[Mapping[str, Mapping[str, float]], Mapping[str, Mapping[int, Any]]]],
) -> Dict[str, Dict[str, float]]:
    """Merge the ranks' :meth:`VolumeAccumulator.partial` results: each volume scored once, on all its slices.

    A volume complete on some rank keeps that rank's score. The slices of
    volumes complete on none (a volume split across ranks, or the number of
    slices unknown) are pooled from every rank (a slice seen twice, e.g. a
    sampler's padding, counts once) and scored together, so the result equals
    a single process's whatever the sampler did.
    """
    merged: Dict[str, Dict[str, float]] = {}
    pooled = VolumeAccumulator()
    parts = list(parts)
    for results, _ in parts:
        for fname, values in results.items():
            merged.setdefault(fname, dict(values))
    for _, open_slices in parts:
        for fname, slices in open_slices.items():
            if fname not in merged:
                pooled.open.setdefault(fname, {}).update(slices)
    merged.update(pooled.finalize())
    return merged
