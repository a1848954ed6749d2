"""Score reconstruction folders against HR targets, the fastMRI way.

* Targets: the HR images our degradation defines (RSS of the HR-grid coil
  images, the magnitude for single-coil), computed from each raw file's
  k-space with the same transform the training uses. On the 320x320 grid
  this equals the files' ``reconstruction_esc`` / ``reconstruction_rss``;
  ``target_key`` reads such a dataset instead (centre-cropped to the grid).
* Metrics: per-volume NMSE, PSNR and SSIM from ``fastmri.evaluate`` (volume
  max as data range), through :func:`iconet_fastmri.metrics.volume_metrics`.
* Tables: mean ± std over volumes per method x acquisition x scale x
  acceleration (with the effective acceleration s² × R), optional bootstrap
  confidence intervals, and a paired comparison of two methods.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch

from .data.transforms import center_crop_2d, hr_target
from .io import atomic_write_json
from .metrics import METRIC_NAMES, volume_metrics

__all__ = [
    "load_target_volume",
    "load_prediction",
    "evaluate_folders",
    "summarize_rows",
    "paired_comparison",
    "write_csv",
    "PredictionError",
]



class PredictionError(ValueError):
    """A prediction folder or file that cannot be scored; the message names it."""


def load_target_volume(
    path: Union[str, Path],
    hr_crop: Tuple[int, int],
    target_key: Optional[str] = None,
    pad_if_smaller: bool = False,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """HR target volume ``(S, H, W)`` float32 of one raw fastMRI file, and its attributes.

    From the k-space by the training's HR grid rule (:func:`~.data.transforms.hr_target`),
    or the file's own ``target_key`` dataset centre-cropped to ``hr_crop``.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if target_key is not None:
            if target_key not in f:
                raise KeyError(f"{path}: no dataset {target_key!r} (has {sorted(f.keys())})")
            volume = torch.from_numpy(np.asarray(f[target_key], dtype=np.float32))
            return center_crop_2d(volume, hr_crop).numpy(), attrs
        if "kspace" not in f:
            raise KeyError(f"{path}: missing dataset 'kspace'")
        slices = [
            hr_target(f["kspace"][i], hr_crop, pad_if_smaller, path.name, i).numpy()
            for i in range(f["kspace"].shape[0])
        ]
    return np.stack(slices).astype(np.float32), attrs


def load_prediction(path: Union[str, Path]) -> Tuple[np.ndarray, Dict[str, Any]]:
    """``reconstruction`` ``(S, H, W)`` and attributes of one prediction file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "reconstruction" not in f:
                raise PredictionError(f"{path}: no dataset 'reconstruction' (has {sorted(f.keys())})")
            recon = np.asarray(f["reconstruction"])
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as err:
        raise PredictionError(f"{path}: cannot be read as HDF5 ({err})") from err
    if recon.ndim != 3:
        raise PredictionError(f"{path}: 'reconstruction' has shape {recon.shape}; expected (slices, H, W)")
    return recon, attrs


@dataclass
class _Method:
    name: str
    folder: Path


def _method_list(folders: Sequence[Union[str, Path]], names: Optional[Sequence[str]]) -> List[_Method]:
    if names is not None and len(names) != len(folders):
        raise ValueError(f"{len(names)} names for {len(folders)} prediction folders")
    methods = []
    for i, folder in enumerate(folders):
        folder = Path(folder)
        _h5_files(folder, "prediction", PredictionError)
        methods.append(_Method(names[i] if names else folder.name, folder))
    return methods


def _h5_files(folder: Path, kind: str, error: type) -> List[Path]:
    if not folder.is_dir():
        raise error(f"{kind} folder {folder} does not exist")
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise error(f"{kind} folder {folder} holds no .h5 files")
    return files


def evaluate_folders(
    target_dir: Union[str, Path],
    prediction_dirs: Sequence[Union[str, Path]],
    names: Optional[Sequence[str]] = None,
    hr_crop: Optional[Tuple[int, int]] = None,
    target_key: Optional[str] = None,
    allow_missing: bool = False,
) -> List[Dict[str, Any]]:
    """Per-volume metrics of every method.

    Args:
        target_dir: folder of raw fastMRI files (the volumes to score).
        prediction_dirs: one folder per method, as ``run_inference.py`` writes them.
        names: method names (default: each prediction file's ``method`` attribute, else the folder name).
        hr_crop: HR grid; default the predictions' own size.
        target_key: read this dataset as target instead of computing it from k-space.
        allow_missing: skip volumes a method lacks instead of raising.

    Returns:
        One row per (method, volume): method, fname, acquisition, scale,
        acceleration, effective_acceleration, num_slices, nmse, psnr, ssim.
    """
    target_dir = Path(target_dir)
    volumes = _h5_files(target_dir, "target", FileNotFoundError)
    methods = _method_list(prediction_dirs, names)
    rows: List[Dict[str, Any]] = []
    # Volumes outside, methods inside: each target is computed once and only one is in memory.
    for volume in volumes:
        targets: Dict[Tuple[int, int], Tuple[np.ndarray, Dict[str, Any]]] = {}
        for index, method in enumerate(methods):
            pred_path = method.folder / volume.name
            if not pred_path.exists():
                if allow_missing:
                    continue
                raise PredictionError(
                    f"{pred_path}: missing prediction for volume {volume.name} of {target_dir} "
                    f"(method {method.name!r}); pass --allow_missing to skip it"
                )
            pred, attrs = load_prediction(pred_path)
            grid = tuple(hr_crop) if hr_crop else (int(pred.shape[-2]), int(pred.shape[-1]))
            if grid not in targets:
                targets[grid] = load_target_volume(volume, grid, target_key)
            target, target_attrs = targets[grid]
            if pred.shape != target.shape:
                raise PredictionError(
                    f"{pred_path}: prediction shape {pred.shape} does not match the target shape "
                    f"{target.shape} of {volume}"
                )
            name = names[index] if names else str(attrs.get("method") or method.name)
            metrics = volume_metrics(target, pred.astype(np.float32))
            rows.append(
                {
                    "method": name,
                    "folder": str(method.folder),
                    "fname": volume.name,
                    "acquisition": str(target_attrs.get("acquisition", attrs.get("acquisition", ""))),
                    "scale": int(attrs.get("scale", 0)),
                    "mask": str(attrs.get("mask_name", "")),
                    "acceleration": float(attrs.get("acceleration", float("nan"))),
                    "effective_acceleration": float(attrs.get("effective_acceleration", float("nan"))),
                    "num_slices": int(pred.shape[0]),
                    **metrics,
                }
            )
    return rows


def _bootstrap_ci(values: np.ndarray, n: int, rng: np.random.Generator, level: float = 0.95) -> Tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarize_rows(rows: Sequence[Dict[str, Any]], bootstrap: int = 0, seed: int = 0) -> List[Dict[str, Any]]:
    """Mean ± std (and optional bootstrap 95% CI) per method x acquisition x scale x acceleration."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    acquisitions = {row["acquisition"] for row in rows}
    for row in rows:
        key = (row["method"], row["acquisition"], row["scale"], row["mask"], row["acceleration"])
        groups.setdefault(key, []).append(row)
        if len(acquisitions) > 1:  # also pool all acquisitions
            groups.setdefault((row["method"], "all", row["scale"], row["mask"], row["acceleration"]), []).append(row)
    rng = np.random.default_rng(seed)
    table = []
    for (method, acq, scale, mask, accel), members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        entry: Dict[str, Any] = {
            "method": method,
            "acquisition": acq,
            "scale": scale,
            "mask": mask,
            "acceleration": accel,
            "effective_acceleration": float(np.mean([m["effective_acceleration"] for m in members])),
            "volumes": len(members),
        }
        for metric in METRIC_NAMES:
            values = np.array([m[metric] for m in members], dtype=np.float64)
            entry[f"{metric}_mean"] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            if bootstrap:
                entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = _bootstrap_ci(values, bootstrap, rng)
        table.append(entry)
    return table


def paired_comparison(
    rows: Sequence[Dict[str, Any]], method_a: str, method_b: str, bootstrap: int = 2000, seed: int = 0
) -> Dict[str, Any]:
    """Per-volume differences ``a - b`` on the volumes both methods scored.

    Reports the mean difference, a bootstrap 95% CI, and the two-sided
    Wilcoxon signed-rank p-value (scipy) for each metric.
    """
    from scipy.stats import wilcoxon

    by = {m: {r["fname"]: r for r in rows if r["method"] == m} for m in (method_a, method_b)}
    for m in (method_a, method_b):
        if not by[m]:
            raise ValueError(f"no results for method {m!r}; methods are {sorted({r['method'] for r in rows})}")
    common = sorted(set(by[method_a]) & set(by[method_b]))
    if not common:
        raise ValueError(f"methods {method_a!r} and {method_b!r} share no volumes")
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {"a": method_a, "b": method_b, "volumes": len(common)}
    for metric in METRIC_NAMES:
        diff = np.array([by[method_a][f][metric] - by[method_b][f][metric] for f in common])
        lo, hi = _bootstrap_ci(diff, bootstrap, rng)
        try:
            p = float(wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0) else float("nan")
        except ValueError:
            p = float("nan")
        out[metric] = {"mean_diff": float(diff.mean()), "ci_low": lo, "ci_high": hi, "wilcoxon_p": p,
                       "a_better": int(np.sum(diff < 0 if metric == "nmse" else diff > 0))}
    return out


def write_csv(path: Union[str, Path], rows: Sequence[Dict[str, Any]]) -> None:
    """Write dict rows (union of keys as columns)."""
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def format_table(table: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`summarize_rows` output."""
    has_ci = any("psnr_ci_low" in t for t in table)
    head = "| method | acquisition | scale | mask | R (LR) | s²·R (HR) | volumes | NMSE | PSNR (dB) | SSIM |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        def cell(metric: str, digits: int) -> str:
            text = f"{t[f'{metric}_mean']:.{digits}f} ± {t[f'{metric}_std']:.{digits}f}"
            if has_ci and f"{metric}_ci_low" in t:
                text += f" [{t[f'{metric}_ci_low']:.{digits}f}, {t[f'{metric}_ci_high']:.{digits}f}]"
            return text
        lines.append(
            f"| {t['method']} | {t['acquisition']} | x{t['scale']} | {t['mask']} | {t['acceleration']:g} | "
            f"{t['effective_acceleration']:.1f} | {t['volumes']} | {cell('nmse', 4)} | {cell('psnr', 2)} | {cell('ssim', 4)} |"
        )
    return "\n".join(lines)


def save_json(path: Union[str, Path], payload: Dict[str, Any]) -> None:
    """Write ``payload`` as JSON, atomically (numpy scalars as floats)."""
    atomic_write_json(path, payload, indent=1, sort_keys=True, default=float)
