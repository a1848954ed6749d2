"""Reconstruct real low-resolution acquisitions: no ground truth, a data-consistency residual instead.

``run_inference.py --acquired`` (:func:`reconstruct_acquired`) reads low-resolution
acquisition files (:mod:`iconet_fastmri.data.lr_files`, e.g. made by
``scripts/make_lr_acquisition.py``), puts each slice on the model's grid in training's
intensity convention, feeds the network the input it was trained on
(:func:`~iconet_fastmri.models.network_input.measured_input`, with data consistency
on the file's own samples and mask where the model has it), and writes fastMRI-format
reconstructions on the s-times grid plus a table (``acquired.csv``) with, per volume:

* the acquired acceleration on the LR grid and the effective one against the HR grid (s²·R);
* the k-space data-consistency residual ``‖M·F·T·x̂ − y‖ / ‖y‖`` of the output against
  the measured samples (complex models only: a magnitude output has no phase to
  compare; multi-coil outputs go through the coil maps, sinc-interpolated to the
  output grid and renormalised).

Refused before any work, naming the file and the numbers: a file written for another
scale (its ``lr_scale``), a header that disagrees with the array (see
:func:`~iconet_fastmri.data.lr_files.read_lr_file`), a 2D sampling pattern for a model
trained on 1D masks or the reverse. An acceleration far from training's is a warning
stating both.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .data.lr_files import LrScan, model_grid_kspace, read_lr_file
from .divergence import check_finite_reconstruction
from .inference import load_method
from .io import check_outputs_apart
from .models.common import channels_to_complex
from .models.network_input import measured_input
from .physics.masks import undersampled_axes
from .physics.operators import rss, sinc_upsample
from .physics.sense import SenseOperator
from .predictions import check_writable, write_volume_atomic

__all__ = ["reconstruct_acquired", "dc_residual", "AccelerationWarning"]


class AccelerationWarning(UserWarning):
    """A file's acceleration is far from the one the model was trained with."""


def dc_residual(sr: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor,
                maps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``‖A x̂ − y‖ / ‖y‖`` per sample, ``A = M·F·T·S``, for a complex output ``sr`` ``(B, 2, H, W)``.

    ``measured`` ``(B, C, h, w)`` and ``mask`` on the LR grid; ``maps`` ``(B, C, h, w)`` on the LR
    grid for multi-coil data (sinc-interpolated to ``(H, W)`` and renormalised to ``Σ|S|² = 1``).
    """
    x = channels_to_complex(sr.float())
    H, W = x.shape[-2:]
    lr = tuple(measured.shape[-2:])
    if maps is not None:
        up = sinc_upsample(maps, (H, W))
        up = up / rss(up).clamp_min(1e-12)
        op = SenseOperator(up, mask, lr_shape=lr)
    else:
        op = SenseOperator(None, mask, lr_shape=lr, image_shape=(H, W))
    diff = (op(x) - measured).flatten(1).norm(dim=1)
    return diff / measured.flatten(1).norm(dim=1).clamp_min(1e-30)


def _undersampled_rows(mask: np.ndarray) -> bool:
    return not np.array_equal(mask, np.broadcast_to(mask[:, :1, :], mask.shape))


def _check_scan(scan: LrScan, scale: int, trained_r: Optional[float], trained_2d: Optional[bool]) -> float:
    """Refusals and the acceleration warning of one file; returns its acquired R on the LR grid."""
    lr_scale = scan.attrs.get("lr_scale")
    if lr_scale is not None and int(lr_scale) != scale:
        raise ValueError(f"{scan.fname}: written for x{int(lr_scale)} (attribute lr_scale) but the checkpoint "
                         f"upsamples x{scale}")
    rate = float(scan.mask.size / max(float(scan.mask.sum()), 1.0))
    two_d = _undersampled_rows(scan.mask)
    if trained_2d is not None and two_d != trained_2d:
        raise ValueError(f"{scan.fname}: its sampling pattern undersamples {'both axes' if two_d else 'columns only'}, "
                         f"but the model was trained on masks that undersample "
                         f"{'both axes' if trained_2d else 'columns only'}")
    if trained_r and (rate > 1.5 * trained_r or rate < trained_r / 1.5):
        warnings.warn(f"{scan.fname}: acquired at R = {rate:.2f} on the LR grid; the model was trained at "
                      f"R = {trained_r:g}", AccelerationWarning, stacklevel=3)
    return rate


def reconstruct_acquired(
    checkpoint: Union[str, Path],
    data_path: Union[str, Path],
    out_dir: Union[str, Path],
    batch_size: int = 8,
    device: Optional[str] = None,
    overwrite: bool = False,
) -> Tuple[List[Path], List[Dict[str, object]]]:
    """Reconstruct every low-resolution acquisition file of ``data_path`` into ``out_dir``.

    Returns the written files and the table's rows (also written to ``out_dir/acquired.csv``).
    """
    out_dir, data_path = Path(out_dir), Path(data_path)
    check_outputs_apart({"out_dir": out_dir}, {"data_path": data_path})
    check_writable(out_dir)
    files = sorted(data_path.glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"{data_path}: no .h5 files")
    existing = [f.name for f in files if (out_dir / f.name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds results for {len(existing)} volume(s) "
                              f"(e.g. {existing[0]}); pass --overwrite to replace them")
    module, trained, method = load_method(checkpoint, None, None)
    scale = int(module.scale)
    mask_config = module.acquisition.mask
    trained_r = mask_config.nominal_acceleration() if mask_config is not None else None
    trained_func = module.acquisition.mask_func
    trained_2d = None if trained_func is None else undersampled_axes(trained_func, (32, 32))[0]
    needs_mask = module.in_chans == 2 or module.uses_dc
    scans = [read_lr_file(f) for f in files]  # every file checked before any work
    rates = [_check_scan(scan, scale, trained_r, trained_2d) for scan in scans]
    for scan in scans:  # the grid and mask the model needs exist (refusals name the file), still before any work
        model_grid_kspace(scan, 0, scale, scan.recon, with_mask=needs_mask)
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(device_t).eval()
    estimator = module.map_estimator()
    written, rows = [], []
    with torch.inference_mode():
        for scan, rate in zip(scans, rates):
            images, residuals = [], []
            for start in range(0, scan.kspace.shape[0], batch_size):
                parts = [model_grid_kspace(scan, i, scale, scan.recon, with_mask=needs_mask)
                         for i in range(start, min(start + batch_size, scan.kspace.shape[0]))]
                kspace = torch.stack([k for k, _ in parts]).to(device_t)
                # A magnitude model without DC needs no mask (phase-encode oversampled files have none on its grid).
                mask = torch.stack([m for _, m in parts]).to(device_t) if needs_mask else torch.ones_like(kspace[:, :1].real)
                inputs = measured_input(kspace, mask, module.in_chans, module.uses_dc, estimator)
                out = module(inputs)
                sr = module.magnitude(out.sr)[:, 0].cpu().numpy()
                check_finite_reconstruction(sr, [scan.fname] * len(sr), list(range(start, start + len(sr))), method)
                images.append(sr)
                if module.in_chans == 2:
                    residuals.append(dc_residual(out.sr, kspace, mask, inputs.maps).cpu().numpy())
            residual = float(np.mean(np.concatenate(residuals))) if residuals else float("nan")
            attrs = {"method": method, "checkpoint": str(checkpoint), "scale": scale, "source": "acquired",
                     "acquisition": str(scan.attrs.get("acquisition", "")),
                     "effective_acceleration_lr": rate, "effective_acceleration": scale**2 * rate,
                     "dc_residual": residual}
            path = out_dir / scan.fname
            write_volume_atomic(path, np.concatenate(images), attrs)
            written.append(path)
            rows.append({"file": scan.fname, "slices": int(scan.kspace.shape[0]),
                         "lr_grid": f"{scan.recon[0]}x{scan.recon[1]}",
                         "output_grid": f"{scale * scan.recon[0]}x{scale * scan.recon[1]}",
                         "acceleration_lr": round(rate, 3), "acceleration_hr": round(scale**2 * rate, 3),
                         "dc_residual": residual})
    with open(out_dir / "acquired.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return written, rows
