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

A scan whose phase encode is oversampled (fastMRI's files: 368 columns for 320) keeps
its samples on its own wider grid for data consistency (:func:`oversampled_input`,
:class:`~iconet_fastmri.physics.operators.PhaseEncodeOversampling`; docs/ACQUIRED.md).

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

from .data.lr_files import LrScan, model_grid_kspace, phase_encode_samples, read_lr_file
from .divergence import check_finite_reconstruction
from .inference import load_method
from .io import check_outputs_apart
from .models.common import channels_to_complex
from .models.network_input import MapEstimator, NetworkInput, measured_input
from .physics.masks import undersampled_axes
from .physics.fft import fft2c, ifft2c
from .physics.operators import PhaseEncodeOversampling, rss, sinc_upsample
from .physics.sense import SenseOperator
from .predictions import check_writable, write_volume_atomic

__all__ = ["reconstruct_acquired", "dc_residual", "oversampled_input", "AccelerationWarning"]


class AccelerationWarning(UserWarning):
    """A file's acceleration is far from the one the model was trained with."""


def dc_residual(sr: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor,
                maps: Optional[torch.Tensor] = None, encoding: Optional[PhaseEncodeOversampling] = None) -> torch.Tensor:
    """``‖A x̂ − y‖ / ‖y‖`` per sample, ``A = M·F·T·S``, for a complex output ``sr`` ``(B, 2, H, W)``.

    ``measured`` ``(B, C, h, w)`` and ``mask`` on the LR grid; ``maps`` ``(B, C, h, w)`` on the LR
    grid for multi-coil data (sinc-interpolated to ``(H, W)`` and renormalised to ``Σ|S|² = 1``).
    With ``encoding`` (a phase-encode oversampled scan), ``measured`` are the scan's own samples on
    its wide grid and ``A = E·T·S``; what lies outside the reconstructed field of view is not
    in the output, so it is given its best fit (least squares, row by row of k-space): the
    residual is what no content outside the field of view can explain.
    """
    x = channels_to_complex(sr.float())
    H, W = x.shape[-2:]
    lr = tuple(measured.shape[-2:]) if encoding is None else encoding.grid
    if maps is not None:
        up = sinc_upsample(maps, (H, W))
        up = up / rss(up).clamp_min(1e-12)
        op = SenseOperator(up, mask if encoding is None else torch.ones(()), lr_shape=lr)
    else:
        op = SenseOperator(None, mask if encoding is None else torch.ones(()), lr_shape=lr, image_shape=(H, W))
    if encoding is None:
        diff = op(x) - measured
    else:
        diff = measured - encoding(op(x))
        wk, w, start = encoding.wide[1], encoding.grid[1], encoding.start
        outside = torch.cat([torch.arange(start), torch.arange(start + w, wk)]).to(diff.device)
        eye = torch.eye(wk, dtype=diff.dtype, device=diff.device)
        dft = fft2c(eye[:, None, :].expand(wk, 1, wk))[:, 0, :].T  # centred unitary DFT along the phase encode (columns)
        fit = encoding.mask.to(diff.dtype)[..., None] * dft[:, outside]  # (B, 1, h, w_k, band) per k-space row
        band = torch.linalg.pinv(fit) @ diff[..., None]
        diff = (diff[..., None] - fit @ band)[..., 0]
    return diff.flatten(1).norm(dim=1) / measured.flatten(1).norm(dim=1).clamp_min(1e-30)


def oversampled_input(kspace: torch.Tensor, samples: torch.Tensor, mask: torch.Tensor, in_chans: int, uses_dc: bool,
                      estimate_maps: MapEstimator) -> NetworkInput:
    """The network input of a phase-encode oversampled scan, with data consistency through its own samples.

    ``kspace`` ``(B, C, h, w)``: the zero-filled image cropped to the model's grid
    (:func:`~iconet_fastmri.data.lr_files.model_grid_kspace`, the network's input as for any
    scan); ``samples``, ``mask`` ``(B, C|1, h, w_k)``: the scan's samples on its wide grid
    (:func:`~iconet_fastmri.data.lr_files.phase_encode_samples`). Coil maps are estimated on
    the wide grid (its calibration lines) and cropped to the model's field of view. Data
    consistency (:class:`~iconet_fastmri.physics.operators.PhaseEncodeOversampling`) keeps what
    lies outside the field of view at the zero-filled image's content there: its samples are
    subtracted from the measurements.
    """
    encoding = PhaseEncodeOversampling(mask, kspace.shape[-2:])
    inside = slice(encoding.start, encoding.start + encoding.grid[1])
    maps = None
    if in_chans == 2 and kspace.shape[1] > 1:
        with torch.autocast(device_type=kspace.device.type, enabled=False):
            maps = estimate_maps(samples, mask)[..., inside].contiguous()
    inputs = measured_input(kspace, mask, in_chans, False, maps=maps)
    if uses_dc:
        outside = ifft2c(samples)
        outside[..., inside] = 0
        inputs.dc = {"measured_kspace": samples - fft2c(outside) * mask, "mask": mask, "encoding": encoding}
        if maps is not None:
            inputs.dc["maps"] = maps
    return inputs


def _undersampled_rows(mask: np.ndarray) -> bool:
    return not np.array_equal(mask, np.broadcast_to(mask[:, :1, :], mask.shape))


def _phase_encode_oversampled(scan: LrScan) -> bool:
    return scan.encoded[1] > scan.recon[1]


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
    for scan in scans:  # the grid and samples the model needs exist (refusals name the file), still before any work
        if needs_mask and _phase_encode_oversampled(scan):
            phase_encode_samples(scan, 0, scale, scan.recon)
        else:
            model_grid_kspace(scan, 0, scale, scan.recon, with_mask=needs_mask)
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(device_t).eval()
    estimator = module.map_estimator()
    written, rows = [], []
    with torch.inference_mode():
        for scan, rate in zip(scans, rates):
            images, residuals = [], []
            wide = needs_mask and _phase_encode_oversampled(scan)
            for start in range(0, scan.kspace.shape[0], batch_size):
                numbers = range(start, min(start + batch_size, scan.kspace.shape[0]))
                encoding = None
                if wide:  # the samples stay on the scan's wider phase-encode grid
                    kspace = torch.stack([model_grid_kspace(scan, i, scale, scan.recon, with_mask=False)[0]
                                          for i in numbers]).to(device_t)
                    parts = [phase_encode_samples(scan, i, scale, scan.recon) for i in numbers]
                    samples = torch.stack([k for k, _ in parts]).to(device_t)
                    mask = torch.stack([m for _, m in parts]).to(device_t)
                    inputs = oversampled_input(kspace, samples, mask, module.in_chans, module.uses_dc, estimator)
                    encoding = PhaseEncodeOversampling(mask, scan.recon)
                else:
                    parts = [model_grid_kspace(scan, i, scale, scan.recon, with_mask=needs_mask) for i in numbers]
                    kspace = samples = torch.stack([k for k, _ in parts]).to(device_t)
                    # A magnitude model without DC needs no mask.
                    mask = (torch.stack([m for _, m in parts]).to(device_t) if needs_mask
                            else torch.ones_like(kspace[:, :1].real))
                    inputs = measured_input(kspace, mask, module.in_chans, module.uses_dc, estimator)
                out = module(inputs)
                sr = module.magnitude(out.sr)[:, 0].cpu().numpy()
                check_finite_reconstruction(sr, [scan.fname] * len(sr), list(numbers), method)
                images.append(sr)
                if module.in_chans == 2:
                    residuals.append(dc_residual(out.sr, samples, mask, inputs.maps, encoding).cpu().numpy())
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
