"""Mask sweeps: methods x masks x accelerations on one data folder -> a table and plots.

The first experiment of a researcher who swaps masks: what happens when the
test mask differs from the training mask. For every method (a checkpoint or
a baseline), every mask name and every acceleration R (on the LR grid),
:func:`mask_sweep` runs the shipped inference (:func:`~iconet_fastmri.inference.run_inference`,
masks seeded per slice or volume as in training) and scores the volumes
with :func:`~iconet_fastmri.evaluation.evaluate_folders`. One row per cell:
PSNR / SSIM / NMSE mean, std and bootstrap 95% CI over volumes, with the
effective acceleration relative to the HR grid, ``s² · R`` (measured from the
masks actually drawn). :func:`plot_sweep` draws PSNR and SSIM against
``s² · R``, one line per (method, mask), the training mask's point marked.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .checkpoints import load_checkpoint
from .evaluation import evaluate_folders, format_cell, summarize_rows
from .figures import save_figure
from .inference import BASELINES, run_inference
from .physics.masks import MaskConfig, available_masks

__all__ = ["mask_sweep", "plot_sweep", "write_sweep_table"]


def _method_name(source: Union[str, Path]) -> str:
    source = str(source)
    if source in BASELINES:
        return source
    path = Path(source)
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def mask_sweep(
    data_path: Union[str, Path],
    out_dir: Union[str, Path],
    methods: Sequence[Union[str, Path]],
    masks: Sequence[str],
    accelerations: Sequence[float],
    scale: Optional[int] = None,
    hr_crop: Optional[Tuple[int, int]] = None,
    center_fractions: Sequence[float] = (0.08,),
    bootstrap: int = 1000,
    batch_size: int = 8,
    device: Optional[str] = None,
    progress: bool = False,
) -> List[Dict[str, Any]]:
    """Run every (method, mask, R) cell; return one summary row per cell.

    Args:
        data_path: folder of raw fastMRI files (targets and inputs).
        out_dir: predictions go to ``<out_dir>/predictions/<method>/<mask>_R<R>/``.
        methods: checkpoint paths, or baseline names (``zero_filled_bicubic``, ``zero_filled_sinc``;
            these need ``scale`` and ``hr_crop``).
        masks: registered mask names (``random``, ``equispaced``, ``poisson``, ...).
        accelerations: R values on the LR grid.
        center_fractions: the fully sampled centre of every mask.

    Returns:
        Rows: method, mask, acceleration, effective_acceleration (s²·R measured),
        training_mask (whether the method was trained with this mask and R),
        volumes, and ``<metric>_mean/_std/_ci_low/_ci_high`` for NMSE, PSNR, SSIM.
    """
    unknown = [m for m in masks if m not in available_masks()]
    if unknown:
        raise ValueError(f"unknown mask(s) {unknown}; registered masks: {available_masks()}")
    if not methods:
        raise ValueError("give at least one checkpoint or baseline")
    out_dir = Path(out_dir)
    rows: List[Dict[str, Any]] = []
    for method in methods:
        baseline = str(method) if str(method) in BASELINES else None
        checkpoint = None if baseline else Path(method)
        trained: Dict[str, Any] = {}
        if checkpoint is not None:
            trained = dict(load_checkpoint(checkpoint).get("IconetDataModule") or {})
        train_mask = trained.get("mask") or {}
        name = _method_name(method)
        for mask_name in masks:
            for r in accelerations:
                mask = replace(MaskConfig(name=mask_name), center_fractions=list(center_fractions),
                               accelerations=[float(r)])
                folder = out_dir / "predictions" / name / f"{mask_name}_R{r:g}"
                run_inference(data_path, folder, checkpoint=checkpoint, baseline=baseline, scale=scale,
                              mask=mask, hr_crop=hr_crop, batch_size=batch_size, device=device,
                              overwrite=True, progress=progress)
                per_volume = evaluate_folders(data_path, [folder], names=[name])
                table = summarize_rows(per_volume, bootstrap=bootstrap)
                summary = dict(([t for t in table if t["acquisition"] == "all"] or table)[0])  # pooled
                summary.update(
                    method=name,
                    mask=mask_name,
                    acceleration=float(r),
                    training_mask=bool(train_mask.get("name") == mask_name
                                       and float(r) in [float(a) for a in train_mask.get("accelerations", [])]),
                )
                rows.append(summary)
    return rows


def write_sweep_table(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path]) -> Tuple[Path, Path]:
    """``sweep.csv`` (every field) and ``sweep.md`` (one line per cell) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(out_dir / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    lines = ["| method | mask | R (LR) | s²·R (HR) | trained on it | volumes | NMSE | PSNR (dB) | SSIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        eff = row.get("effective_acceleration")
        lines.append(
            f"| {row['method']} | {row['mask']} | {row['acceleration']:g} | "
            f"{'unknown' if eff is None else f'{eff:.1f}'} | {'yes' if row['training_mask'] else ''} | "
            f"{row['volumes']} | {format_cell(row, 'nmse', 4)} | {format_cell(row, 'psnr', 2)} | {format_cell(row, 'ssim', 4)} |"
        )
    (out_dir / "sweep.md").write_text("\n".join(lines) + "\n")
    return out_dir / "sweep.csv", out_dir / "sweep.md"


def plot_sweep(rows: Sequence[Dict[str, Any]], out_png: Union[str, Path]) -> Path:
    """PSNR and SSIM against s²·R, one line per (method, mask), the training mask's point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["mask"]), []).append(row)
    for ax, metric, label in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
        for (method, mask), members in sorted(groups.items()):
            members = sorted(members, key=lambda r: r["effective_acceleration"])
            x = np.array([r["effective_acceleration"] for r in members])
            y = np.array([r[f"{metric}_mean"] for r in members])
            line, = ax.plot(x, y, marker="o", label=f"{method} / {mask}")
            if f"{metric}_ci_low" in members[0]:
                low = np.array([r[f"{metric}_ci_low"] for r in members])
                high = np.array([r[f"{metric}_ci_high"] for r in members])
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
            for r in members:
                if r["training_mask"]:
                    ax.plot(r["effective_acceleration"], r[f"{metric}_mean"], marker="*", markersize=16,
                            color=line.get_color(), markeredgecolor="black")
        ax.set_xlabel("effective acceleration s²·R (HR grid)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("mask sweep (★ = the mask and R the method was trained with)", fontsize=10)
    return save_figure(fig, out_png)

