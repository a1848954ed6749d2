"""Score reconstruction folders against HR targets, the fastMRI way.

* Targets: the HR images our degradation defines (RSS of the HR-grid coil
  images, the magnitude for single-coil), computed from each raw file's
  k-space with the same transform the training uses. On the 320x320 grid
  this equals the files' ``reconstruction_esc`` / ``reconstruction_rss``;
  ``target_key`` reads such a dataset instead (centre-cropped to the grid).
* Metrics: per-volume NMSE, PSNR and SSIM from ``fastmri.evaluate`` (volume
  max as data range), through :func:`iconet_fastmri.metrics.volume_metrics`.
* Tables: mean ± std over volumes per method x acquisition x scale x HR grid x
  acceleration (with the effective acceleration s² × R), optional bootstrap
  confidence intervals, and a paired comparison of two methods. The HR grid a
  folder was scored on is a column; folders scored on different grids (whose
  numbers are not comparable: a smaller grid is a smaller centre crop) give a
  :class:`MixedGridsWarning`.
* Negative magnitudes: each row records the fraction of the prediction's
  pixels below zero (``negative_fraction``; the metrics stay fastMRI's on the
  given arrays), and a folder holding any gives a :class:`NegativeMagnitudesWarning`.
* Files without the run's attributes (e.g. one rewritten by another tool) take
  their folder's settings where the folder's other files agree
  (:class:`MissingAttributesWarning` says so, or names what cannot be inferred).

The module is long because scoring must refuse every way a prediction folder
can be wrong (NaN, complex, off-grid, mis-declared, duplicated) with a message
naming the file, next to the tables it feeds; splitting the checks from the
scoring would put the rule and its exceptions in two places.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch

from .data.transforms import center_crop_2d, hr_target
from .data.validation import DEFAULT_MAX_SLICE_ELEMENTS, FastMRIFileError, validate_fastmri_file
from .io import atomic_write_json
from .metrics import METRIC_NAMES, volume_metrics

__all__ = [
    "load_target_volume",
    "load_prediction",
    "evaluate_folders",
    "summarize_rows",
    "format_cell",
    "paired_comparison",
    "write_csv",
    "PredictionError",
    "TargetError",
    "MixedGridsWarning",
    "NegativeMagnitudesWarning",
    "MissingAttributesWarning",
    "EVALUATION_WARNINGS",
    "RUN_ATTRIBUTES",
    "mixed_grids",
    "negative_magnitudes",
]


class PredictionError(ValueError):
    """A prediction folder or file that cannot be scored; the message names it."""


class TargetError(ValueError):
    """A target file that cannot be read; the message names it."""


class MixedGridsWarning(UserWarning):
    """Rows of one evaluation were scored on different HR grids (their numbers are not comparable)."""


class NegativeMagnitudesWarning(UserWarning):
    """A prediction folder holds negative magnitudes (scored as given; a magnitude image is non-negative)."""


class MissingAttributesWarning(UserWarning):
    """Prediction files without the run's attributes: their folder's settings were taken, or could not be."""


#: The warnings an evaluation reports (``scripts/evaluate.py`` prints them and keeps them in its outputs).
EVALUATION_WARNINGS = (MixedGridsWarning, NegativeMagnitudesWarning, MissingAttributesWarning)

#: The run attributes a prediction file carries (:func:`~.predictions.volume_attributes`) that scoring
#: reads; the effective acceleration is measured per volume, so it is never taken from another file.
RUN_ATTRIBUTES = ("method", "scale", "hr_crop", "pad_if_smaller", "mask_name", "acceleration")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:  # non-numeric (strings)
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _folder_settings(
    folder: Path, files: Dict[str, Dict[str, Any]]
) -> Tuple[Dict[str, Dict[str, Any]], Optional[str]]:
    """Fill the run attributes a file lacks from the other files of its folder, where those agree.

    ``files`` maps file names to their attributes. A folder where no file carries an attribute
    (``fastmri.save_reconstructions``) is left as it is. Returns the completed attributes and a
    warning text naming the files that lacked attributes (what was taken, and what could not be).
    """
    lacking = {name: [k for k in RUN_ATTRIBUTES if k not in attrs] for name, attrs in files.items()}
    lacking = {name: keys for name, keys in lacking.items() if keys}
    if not lacking:
        return files, None
    completed = {name: dict(attrs) for name, attrs in files.items()}
    taken: Dict[str, List[str]] = {}
    unknown: Dict[str, List[str]] = {}
    for name, keys in sorted(lacking.items()):
        for key in keys:
            values = [attrs[key] for other, attrs in files.items() if other != name and key in attrs]
            if not values:
                continue  # no file of the folder says: nothing to infer, nothing lost
            if all(_same(v, values[0]) for v in values[1:]):
                completed[name][key] = values[0]
                taken.setdefault(name, []).append(key)
            else:
                unknown.setdefault(name, []).append(key)
    if not taken and not unknown:
        return files, None
    parts = []
    if taken:
        listing = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in taken.items())
        parts.append(
            f"{folder}: {len(taken)} prediction file(s) lack the run's attributes and are scored with the "
            f"settings the folder's other files agree on: {listing}"
        )
    if unknown:
        listing = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in unknown.items())
        parts.append(
            f"{folder}: the settings of {len(unknown)} prediction file(s) without the run's attributes cannot be "
            f"inferred, as the folder's other files disagree on them: {listing}. These volumes are pooled "
            f"apart from the rest of the folder (shown as unknown); pass --scale / --acceleration or "
            f"rewrite the files with their run's attributes"
        )
    return completed, ". ".join(parts)


def negative_magnitudes(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Warning texts, one per prediction folder whose volumes hold negative magnitudes, naming them."""
    folders: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if row.get("negative_fraction", 0.0) > 0:
            folders.setdefault(str(row["folder"]), []).append(row)
    texts = []
    for folder, members in folders.items():
        listing = ", ".join(f"{r['fname']} {r['negative_fraction']:.3f}" for r in members)
        texts.append(
            f"{folder} (method {members[0]['method']!r}): {len(members)} prediction volume(s) hold negative "
            f"magnitudes (fraction of pixels below zero: {listing}); they are scored as given, but a magnitude "
            f"image is non-negative, so the scores include the negative values"
        )
    return texts


def mixed_grids(rows: Sequence[Dict[str, Any]]) -> Optional[str]:
    """A warning text if the rows were scored on more than one HR grid, naming each method's grid(s)."""
    grids: Dict[str, List[str]] = {}
    for row in rows:
        grid = row.get("grid") or "unknown"
        seen = grids.setdefault(str(row["method"]), [])
        if grid not in seen:
            seen.append(grid)
    if len({g for gs in grids.values() for g in gs}) < 2:
        return None
    listing = ", ".join(f"{method}: {' and '.join(sorted(gs))}" for method, gs in grids.items())
    return (
        f"the predictions were scored on different HR grids ({listing}): their numbers are not comparable "
        f"(a smaller grid is a smaller centre crop of the image). The grid column of the table keeps them "
        f"apart; to compare them, score every folder on one grid with --hr_crop H W "
        f"(and --crop_predictions for larger predictions)"
    )


#: At most this many slices in a prediction or target volume.
MAX_SLICES = 4096


def _check_declared_shape(path: Path, key: str, shape: Tuple[int, ...], max_slice_elements: int, error: type) -> None:
    """Refuse a dataset whose declared shape is absurd, before reading it."""
    if len(shape) != 3:
        raise error(f"{path}: {key!r} has shape {shape}; expected (slices, H, W)")
    if shape[0] > MAX_SLICES or shape[1] * shape[2] > max_slice_elements:
        raise error(
            f"{path}: {key!r} declares shape {shape}, above the limits of {MAX_SLICES} slices and "
            f"{max_slice_elements} pixels per slice; refusing to read it"
        )


def load_target_volume(
    path: Union[str, Path],
    hr_crop: Tuple[int, int],
    target_key: Optional[str] = None,
    pad_if_smaller: bool = False,
    max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """HR target volume ``(S, H, W)`` float32 of one raw fastMRI file, and its attributes.

    From the k-space by the training's HR grid rule (:func:`~.data.transforms.hr_target`,
    with the same ``pad_if_smaller``), or the file's own ``target_key`` dataset
    centre-cropped to ``hr_crop``. Shapes are checked before anything is read,
    and every error names the file.
    """
    path = Path(path)
    try:
        if target_key is None:
            validate_fastmri_file(path, None, max_slice_elements)
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if target_key is not None:
                if target_key not in f:
                    raise TargetError(f"{path}: no dataset {target_key!r} (has {sorted(f.keys())})")
                _check_declared_shape(path, target_key, f[target_key].shape, max_slice_elements, TargetError)
                volume = torch.from_numpy(np.asarray(f[target_key], dtype=np.float32))
                return center_crop_2d(volume, hr_crop).numpy(), attrs
            slices = [
                hr_target(f["kspace"][i], hr_crop, pad_if_smaller, path.name, i).numpy()
                for i in range(f["kspace"].shape[0])
            ]
    except FastMRIFileError as err:
        raise TargetError(str(err)) from err
    except (OSError, KeyError) as err:
        raise TargetError(f"{path}: cannot be read ({err})") from err
    except ValueError as err:
        if str(path.name) in str(err):
            raise
        raise TargetError(f"{path}: {err}") from err
    return np.stack(slices).astype(np.float32), attrs


def load_prediction(
    path: Union[str, Path], max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """``reconstruction`` ``(S, H, W)`` and attributes of one prediction file.

    Refused, naming the file: a missing dataset, a declared shape beyond the
    limits (checked before reading), complex or non-numeric data. Non-finite
    values are checked by :func:`evaluate_folders` (which names the slices).
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "reconstruction" not in f:
                raise PredictionError(f"{path}: no dataset 'reconstruction' (has {sorted(f.keys())})")
            dataset = f["reconstruction"]
            _check_declared_shape(path, "reconstruction", dataset.shape, max_slice_elements, PredictionError)
            if dataset.dtype.kind not in "fiu":
                kind = "complex" if dataset.dtype.kind == "c" else f"non-numeric ({dataset.dtype})"
                raise PredictionError(
                    f"{path}: 'reconstruction' is {kind}; fastMRI scores real magnitude images "
                    f"(take the magnitude before saving)"
                )
            recon = np.asarray(dataset)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as err:
        raise PredictionError(f"{path}: cannot be read as HDF5 ({err})") from err
    return recon, attrs


def _read_attributes(path: Path) -> Dict[str, Any]:
    """The attributes of one prediction file (nothing else is read)."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as err:
        raise PredictionError(f"{path}: cannot be read as HDF5 ({err})") from err


@dataclass
class _Method:
    name: str
    folder: Path


def _method_list(folders: Sequence[Union[str, Path]], names: Optional[Sequence[str]]) -> List[_Method]:
    """One method per folder, named by ``names`` or else by the folder's name; duplicates are an error."""
    if names is not None and len(names) != len(folders):
        raise ValueError(f"{len(names)} names for {len(folders)} prediction folders")
    methods = []
    for i, folder in enumerate(folders):
        folder = Path(folder)
        _h5_files(folder, "prediction", PredictionError)
        methods.append(_Method(names[i] if names else folder.name, folder))
    seen: Dict[str, Path] = {}
    for method in methods:
        if method.name in seen:
            raise ValueError(
                f"two prediction folders are both called {method.name!r} ({seen[method.name]} and "
                f"{method.folder}); name them with --names"
            )
        seen[method.name] = method.folder
    return methods


def _h5_files(folder: Path, kind: str, error: type) -> List[Path]:
    if not folder.is_dir():
        raise error(f"{kind} folder {folder} does not exist")
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise error(f"{kind} folder {folder} holds no .h5 files")
    return files


def _run_grid(
    pred_path: Path, attrs: Dict[str, Any], volume: Path, hr_crop: Optional[Tuple[int, int]]
) -> Tuple[int, int]:
    """The HR grid a prediction is scored on: ``hr_crop`` given, else the run's (file attribute),
    else the shape of the target file's own reconstruction (fastMRI's files)."""
    if hr_crop:
        return int(hr_crop[0]), int(hr_crop[1])
    if "hr_crop" in attrs:
        grid = np.asarray(attrs["hr_crop"]).reshape(-1)
        return int(grid[0]), int(grid[1])
    try:
        with h5py.File(volume, "r") as f:
            for key in ("reconstruction_esc", "reconstruction_rss"):
                if key in f and len(f[key].shape) == 3:
                    return int(f[key].shape[1]), int(f[key].shape[2])
    except OSError as err:
        raise TargetError(f"{volume}: cannot be read ({err})") from err
    raise PredictionError(
        f"{pred_path}: no 'hr_crop' attribute and {volume.name} has no reconstruction to take the grid "
        f"from; pass --hr_crop H W"
    )


def _acquisition(volume: Path) -> str:
    try:
        with h5py.File(volume, "r") as f:
            value = f.attrs.get("acquisition", "")
    except OSError as err:
        raise TargetError(f"{volume}: cannot be read ({err})") from err
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr(attrs: Dict[str, Any], key: str, given: Any, cast: type) -> Any:
    if given is not None:
        return cast(given)
    value = attrs.get(key)
    if value is None:
        return None
    value = cast(value)
    return None if isinstance(value, float) and np.isnan(value) else value


def evaluate_folders(
    target_dir: Union[str, Path],
    prediction_dirs: Sequence[Union[str, Path]],
    names: Optional[Sequence[str]] = None,
    hr_crop: Optional[Tuple[int, int]] = None,
    target_key: Optional[str] = None,
    allow_missing: bool = False,
    crop_predictions: bool = False,
    pad_if_smaller: Optional[bool] = None,
    scale: Optional[int] = None,
    acceleration: Optional[float] = None,
    progress: bool = False,
    max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS,
    acquisition: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Per-volume metrics of every method.

    Args:
        target_dir: folder of raw fastMRI files (the volumes to score).
        prediction_dirs: one folder per method, as ``run_inference.py`` (or
            ``fastmri.save_reconstructions``) writes them.
        names: method names (default: each folder's name; two folders of one name are an error).
        hr_crop: the HR grid; default the run's (the predictions' ``hr_crop``
            attribute), else the target file's reconstruction size.
        target_key: read this dataset as target instead of computing it from k-space.
        allow_missing: skip volumes a method lacks instead of raising.
        crop_predictions: centre-crop predictions larger than the grid
            (otherwise a prediction of another size is an error).
        pad_if_smaller: the HR grid rule's padding of narrow images; default
            the run's (file attribute), else off.
        scale, acceleration: for predictions without attributes (e.g.
            ``fastmri.save_reconstructions``); otherwise they are read from the
            files, and ``None`` (shown as unknown) where neither says.
        progress: a progress bar over volumes.
        acquisition: only score volumes whose ``acquisition`` attribute is this (fastMRI's flag).

    Returns:
        One row per (method, volume): method, model (the files' ``method``
        attribute), folder, fname, acquisition, scale, grid (the HR grid scored,
        ``"HxW"``), mask, acceleration, effective_acceleration, num_slices,
        negative_fraction (of the scored prediction's pixels below zero), nmse, psnr, ssim.
        A file lacking run attributes that the folder's other files agree on takes theirs.

    Warns:
        MixedGridsWarning: the rows were scored on more than one HR grid.
        NegativeMagnitudesWarning: predictions hold negative pixels (naming folder, volumes, fractions).
        MissingAttributesWarning: files lack the run's attributes (naming them, and what could not be inferred).

    Raises:
        PredictionError: a missing, unreadable, complex, non-finite or
            mis-shaped prediction, naming the file (and the slices).
        TargetError: an unreadable target file, naming it.
    """
    target_dir = Path(target_dir)
    volumes = _h5_files(target_dir, "target", FileNotFoundError)
    if acquisition is not None:
        volumes = [v for v in volumes if _acquisition(v) == acquisition]
        if not volumes:
            raise FileNotFoundError(f"no volume of {target_dir} has acquisition {acquisition!r}")
    methods = _method_list(prediction_dirs, names)
    rows: List[Dict[str, Any]] = []
    iterator: Any = volumes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(volumes, desc="scoring", unit="volume")
    # The run attributes of every prediction to score, completed from its folder where a file lacks them.
    settings: Dict[str, Dict[str, Dict[str, Any]]] = {}
    attribute_notes: List[str] = []
    for method in methods:
        files = {}
        for volume in volumes:
            if (method.folder / volume.name).exists():
                files[volume.name] = _read_attributes(method.folder / volume.name)
        settings[method.name], note = _folder_settings(method.folder, files)
        if note:
            attribute_notes.append(note)
    # Volumes outside, methods inside: each target is computed once and only one is in memory.
    for volume in iterator:
        targets: Dict[Tuple, Tuple[np.ndarray, Dict[str, Any]]] = {}
        for method in methods:
            pred_path = method.folder / volume.name
            if not pred_path.exists():
                if allow_missing:
                    continue
                raise PredictionError(
                    f"{pred_path}: missing prediction for volume {volume.name} of {target_dir} "
                    f"(method {method.name!r}); pass --allow_missing to skip it"
                )
            pred, attrs = load_prediction(pred_path, max_slice_elements)
            attrs = {**attrs, **settings[method.name].get(volume.name, {})}
            bad = ~np.isfinite(pred)
            if bad.any():
                slices = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)).tolist()
                raise PredictionError(
                    f"{pred_path}: {int(bad.sum())} non-finite values (NaN/Inf) in slice(s) {slices}"
                )
            grid = _run_grid(pred_path, attrs, volume, hr_crop)
            pad = bool(attrs.get("pad_if_smaller", False)) if pad_if_smaller is None else pad_if_smaller
            if (grid, pad) not in targets:
                targets[(grid, pad)] = load_target_volume(volume, grid, target_key, pad, max_slice_elements)
            target, target_attrs = targets[(grid, pad)]
            if pred.shape[-2:] != target.shape[-2:] and crop_predictions and all(
                p >= t for p, t in zip(pred.shape[-2:], target.shape[-2:])
            ):
                pred = center_crop_2d(torch.from_numpy(pred), target.shape[-2:]).numpy()
            if pred.shape != target.shape:
                raise PredictionError(
                    f"{pred_path}: prediction shape {pred.shape} does not match the target shape "
                    f"{target.shape} of {volume} (HR grid {grid[0]}x{grid[1]}"
                    + ("" if crop_predictions else "; --crop_predictions centre-crops larger predictions")
                    + ")"
                )
            metrics = volume_metrics(target, pred.astype(np.float32))
            negative = float(np.count_nonzero(pred < 0)) / max(pred.size, 1)
            row_scale = _attr(attrs, "scale", scale, int)
            rows.append(
                {
                    "method": method.name,
                    "model": str(attrs.get("method", "")),
                    "folder": str(method.folder),
                    "fname": volume.name,
                    "acquisition": str(target_attrs.get("acquisition", attrs.get("acquisition", ""))),
                    "scale": row_scale,
                    "grid": f"{grid[0]}x{grid[1]}",
                    "mask": str(attrs.get("mask_name", "")) or "unknown",
                    "acceleration": _attr(attrs, "acceleration", acceleration, float),
                    "effective_acceleration": _attr(
                        attrs,
                        "effective_acceleration",
                        None if scale is None or acceleration is None else scale**2 * acceleration,
                        float,
                    ),
                    "num_slices": int(pred.shape[0]),
                    "negative_fraction": negative,
                    **metrics,
                }
            )
    for note in attribute_notes:
        warnings.warn(note, MissingAttributesWarning, stacklevel=2)
    for note in negative_magnitudes(rows):
        warnings.warn(note, NegativeMagnitudesWarning, stacklevel=2)
    message = mixed_grids(rows)
    if message:
        warnings.warn(message, MixedGridsWarning, stacklevel=2)
    return rows


def _bootstrap_ci(values: np.ndarray, n: int, rng: np.random.Generator, level: float = 0.95) -> Tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize_rows(rows: Sequence[Dict[str, Any]], bootstrap: int = 0, seed: int = 0) -> List[Dict[str, Any]]:
    """Mean ± std (and optional bootstrap 95% CI) per method x acquisition x scale x HR grid x acceleration.

    Rows of different HR grids are never pooled (the grid is part of each table row).
    """
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    acquisitions = {row["acquisition"] for row in rows}
    for row in rows:
        grid = row.get("grid")
        key = (row["method"], row["acquisition"], row["scale"], grid, row["mask"], row["acceleration"])
        groups.setdefault(key, []).append(row)
        if len(acquisitions) > 1:  # also pool all acquisitions
            groups.setdefault((row["method"], "all", row["scale"], grid, row["mask"], row["acceleration"]),
                              []).append(row)
    rng = np.random.default_rng(seed)
    table = []
    for (method, acq, scale, grid, mask, accel), members in sorted(groups.items(),
                                                                    key=lambda kv: tuple(map(str, kv[0]))):
        entry: Dict[str, Any] = {
            "method": method,
            "acquisition": acq,
            "scale": scale,
            "grid": grid,
            "mask": mask,
            "acceleration": accel,
            "effective_acceleration": _mean_or_none([m["effective_acceleration"] for m in members]),
            "volumes": len(members),
        }
        negatives = [m["negative_fraction"] for m in members if "negative_fraction" in m]
        if negatives:
            entry["negative_fraction_mean"] = float(np.mean(negatives))
            entry["negative_fraction_max"] = float(np.max(negatives))
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


def format_cell(row: Dict[str, Any], metric: str, digits: int, with_ci: bool = True) -> str:
    """``mean ± std [ci_low, ci_high]`` of one metric of a summary row (the CI when present)."""
    text = f"{row[f'{metric}_mean']:.{digits}f} ± {row[f'{metric}_std']:.{digits}f}"
    if with_ci and f"{metric}_ci_low" in row:
        text += f" [{row[f'{metric}_ci_low']:.{digits}f}, {row[f'{metric}_ci_high']:.{digits}f}]"
    return text


def format_table(table: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`summarize_rows` output."""
    has_ci = any("psnr_ci_low" in t for t in table)
    head = "| method | acquisition | scale | grid | mask | R (LR) | s²·R (HR) | volumes | NMSE | PSNR (dB) | SSIM |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        def cell(metric: str, digits: int) -> str:
            return format_cell(t, metric, digits, with_ci=has_ci)
        scale = "unknown" if t["scale"] is None else f"x{t['scale']}"
        accel = "unknown" if t["acceleration"] is None else f"{t['acceleration']:g}"
        eff = "unknown" if t["effective_acceleration"] is None else f"{t['effective_acceleration']:.1f}"
        lines.append(
            f"| {t['method']} | {t['acquisition']} | {scale} | {t.get('grid') or 'unknown'} | {t['mask']} | "
            f"{accel} | {eff} | {t['volumes']} | {cell('nmse', 4)} | {cell('psnr', 2)} | {cell('ssim', 4)} |"
        )
    return "\n".join(lines)


def save_json(path: Union[str, Path], payload: Dict[str, Any]) -> None:
    """Write ``payload`` as JSON, atomically (numpy scalars as floats)."""
    atomic_write_json(path, payload, indent=1, sort_keys=True, default=float)
