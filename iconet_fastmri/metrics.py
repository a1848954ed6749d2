"""Per-volume NMSE / PSNR / SSIM exactly as :mod:`fastmri.evaluate` computes them.

fastMRI's conventions: metrics are computed over whole volumes ``(S, H, W)``;
PSNR and SSIM use the volume's target maximum as data range; SSIM is the mean
over slices (window 7). We call fastmri's own functions (not a copy), and
only take ``.item()`` of SSIM's shape-(1,) array, which ``float()`` rejects
under numpy 2.4.

:class:`VolumeAccumulator` gathers slices as they stream in (one or two
volumes in memory at a time) and scores a volume as soon as all its slices
have arrived.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
from fastmri import evaluate

__all__ = ["volume_metrics", "VolumeAccumulator", "METRIC_NAMES", "summarize"]

METRIC_NAMES = ("nmse", "psnr", "ssim")


def volume_metrics(target: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> Dict[str, float]:
    """NMSE, PSNR and SSIM of one volume, by fastmri.evaluate.

    Args:
        target: ``(S, H, W)`` ground truth.
        pred: ``(S, H, W)`` prediction.
        maxval: data range; default the target volume's maximum (fastMRI's choice).
    """
    # No dtype change: fastMRI scores the float32 arrays of the files as they are.
    target = np.asarray(target)
    pred = np.asarray(pred)
    if target.ndim == 2:
        target, pred = target[None], pred[None]
    if target.shape != pred.shape:
        raise ValueError(f"target shape {target.shape} and prediction shape {pred.shape} differ")
    # maxval None: fastmri's own default (the target volume's max, in its dtype).
    return {
        "nmse": float(np.asarray(evaluate.nmse(target, pred)).item()),
        "psnr": float(np.asarray(evaluate.psnr(target, pred, maxval=maxval)).item()),
        "ssim": float(np.asarray(evaluate.ssim(target, pred, maxval=maxval)).reshape(-1)[0]),
    }


class VolumeAccumulator:
    """Collect per-slice images and score whole volumes with :func:`volume_metrics`.

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
            for name, value in volume_metrics(target, pred).items():
                out[f"{name}_{method}" if method else name] = value
        self.results[fname] = out

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


def merge_results(parts: Iterable[Mapping[str, Mapping[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Merge per-rank results; a volume scored on several ranks is kept once."""
    merged: Dict[str, Dict[str, float]] = {}
    for part in parts:
        for fname, values in part.items():
            merged.setdefault(fname, dict(values))
    return merged
