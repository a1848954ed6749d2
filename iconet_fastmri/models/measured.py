"""Reconstructing measured (real) low-resolution scans: the network input from their samples, and a residual.

:func:`reconstruct_chunk` runs a model on one
:class:`~iconet_fastmri.data.lr_dataset.AcquiredChunk`: the input a simulated batch
would give (:func:`~.network_input.measured_input`), data consistency with the scan's
own samples (through its wider phase-encode grid where it has one:
:func:`oversampled_input`), and the k-space residual of the output against those
samples (:func:`dc_residual`). Used by ``run_inference.py --acquired`` and by the
CLI's ``predict`` on a folder of such scans.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..physics.fft import fft2c
from ..physics.operators import PhaseEncodeOversampling, rss, sinc_upsample
from ..physics.sense import SenseOperator
from .common import channels_to_complex
from .network_input import MapEstimator, NetworkInput, measured_input

__all__ = ["dc_residual", "oversampled_input", "reconstruct_chunk"]


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
                      estimate_maps: MapEstimator) -> Tuple[NetworkInput, PhaseEncodeOversampling]:
    """The network input of a phase-encode oversampled scan, with data consistency through its own samples.

    ``kspace`` ``(B, C, h, w)``: the zero-filled image cropped to the model's grid
    (``E``'s adjoint of the samples, the network's input as for any scan); ``samples``, ``mask`` ``(B, C|1, h, w_k)``: the scan's samples on its wide grid
    (:func:`~iconet_fastmri.data.lr_files.phase_encode_samples`). Coil maps are estimated on
    the wide grid (its calibration lines) and cropped to the model's field of view. Data
    consistency (:class:`~iconet_fastmri.physics.operators.PhaseEncodeOversampling`) keeps what
    lies outside the field of view at the zero-filled image's content there: its samples are
    subtracted from the measurements. Returns the input and the scan's ``E``.
    """
    encoding = PhaseEncodeOversampling(mask, kspace.shape[-2:])
    inside = slice(encoding.start, encoding.start + encoding.grid[1])
    maps = None
    if in_chans == 2 and kspace.shape[1] > 1:
        with torch.autocast(device_type=kspace.device.type, enabled=False):
            maps = estimate_maps(samples, mask)[..., inside].contiguous()
    inputs = measured_input(kspace, mask, in_chans, False, maps=maps)
    if uses_dc:  # the samples less those of the outside's zero-filled content: E of the cropped image
        inputs.dc = {"measured_kspace": encoding(kspace), "mask": mask, "encoding": encoding}
        if maps is not None:
            inputs.dc["maps"] = maps
    return inputs, encoding


def reconstruct_chunk(module: Any, chunk: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``(magnitudes (B, H, W) float32, {"dc_residual": (B,)})`` of a module on an ``AcquiredChunk`` on its device.

    ``module`` is an :class:`~iconet_fastmri.pl_modules.IconetModule` (``in_chans``,
    ``uses_dc``, ``map_estimator()``, ``magnitude``); the residual is ``nan`` for
    magnitude models, whose output has no phase to compare with the samples.
    """
    estimator = module.map_estimator()
    encoding = None
    if chunk.oversampled:
        inputs, encoding = oversampled_input(chunk.kspace, chunk.samples, chunk.mask, module.in_chans, module.uses_dc,
                                             estimator)
    else:
        inputs = measured_input(chunk.kspace, chunk.mask, module.in_chans, module.uses_dc, estimator)
    out = module(inputs)
    sr = module.magnitude(out.sr)[:, 0]
    if module.in_chans == 2:
        residual = dc_residual(out.sr, chunk.samples, chunk.mask, inputs.maps, encoding)
    else:
        residual = torch.full((sr.shape[0],), float("nan"), device=sr.device)
    return sr, {"dc_residual": residual}
