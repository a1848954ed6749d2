"""What a network is fed: its input image, the coil maps, and what its data consistency needs.

:func:`network_input` turns one simulated batch (:class:`~iconet_fastmri.physics.degradation.Degraded`)
into a :class:`NetworkInput`. The coil maps are estimated here, on the forward
path, and travel in the result (the training step hands them to the
phase-aware loss); nothing is kept between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from ..physics.degradation import Degraded
from ..physics.fft import ifft2c
from ..physics.operators import rss
from ..physics.sense import ESPIRIT_KERNEL, estimate_maps_rss, sense_combine

__all__ = ["NetworkInput", "check_map_settings", "network_input", "measured_input"]


@dataclass
class NetworkInput:
    """One batch as a network takes it.

    Attributes:
        image: ``(B, 1, h, w)`` magnitude or ``(B, 2, h, w)`` (real, imag) LR image.
        maps: the coil maps ``(B, C, h, w)`` of complex multi-coil batches, else ``None``.
        dc: keyword arguments of a network with data consistency
            (``measured_kspace``, ``mask`` and, for multi-coil data, ``maps``; for a real scan with
            an oversampled phase encode also ``encoding``); empty otherwise.
        norm_scale: ``(B, 1, 1, 1)`` normalisation scale of the whole slices ``image`` was cut
            from (:func:`~iconet_fastmri.models.patches.cut_patches`); ``None`` for whole
            slices, whose model computes it from ``image``.
    """

    image: torch.Tensor
    maps: Optional[torch.Tensor] = None
    dc: Dict[str, Any] = field(default_factory=dict)
    norm_scale: Optional[torch.Tensor] = None


MapEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def network_input(deg: Degraded, in_chans: int, uses_dc: bool = False,
                  estimate_maps: MapEstimator = estimate_maps_rss) -> NetworkInput:
    """The network input for ``in_chans`` 1 (magnitude) or 2 (complex).

    Complex mode: the complex LR image as (real, imag) channels. For
    single-coil data that is the zero-filled LR image; for multi-coil data the
    SENSE combination ``Σ_c conj(S_c) x_c`` of the zero-filled coil images,
    with maps from the acquired calibration lines by ``estimate_maps(kspace,
    mask)``: the acquisition's RSS estimate
    (:meth:`~iconet_fastmri.physics.acquisition.Acquisition.estimate_maps`) or
    a learned refinement (:class:`~iconet_fastmri.models.coil_maps.LearnedMaps`).
    The maps are computed in float32, outside autocast.
    """
    maps = None
    if in_chans == 1:
        image = deg.lr_input
    else:
        z = deg.lr_input_complex
        if z is None:  # multi-coil
            with torch.autocast(device_type=deg.lr_observed.device.type, enabled=False):
                maps = estimate_maps(deg.lr_observed, deg.mask)
                z = sense_combine(ifft2c(deg.lr_observed), maps)
        image = torch.cat([z.real, z.imag], dim=1)
    dc: Dict[str, torch.Tensor] = {}
    if uses_dc:
        dc = {"measured_kspace": deg.lr_observed, "mask": deg.mask}
        if maps is not None:
            dc["maps"] = maps
    return NetworkInput(image, maps, dc)


def measured_input(lr_observed: torch.Tensor, mask: torch.Tensor, in_chans: int, uses_dc: bool = False,
                   estimate_maps: MapEstimator = estimate_maps_rss, maps: Optional[torch.Tensor] = None) -> NetworkInput:
    """The network input of a real acquisition: its measured LR k-space ``(B, C, h, w)`` on the model's grid.

    The same input :func:`network_input` forms from a simulated batch (tested equal),
    from the measured samples alone: the RSS of the zero-filled coil images
    (magnitude mode), the zero-filled image (complex, single-coil) or its SENSE
    combination with maps from the calibration lines (complex, multi-coil). For
    files read by :func:`~iconet_fastmri.data.lr_files.model_grid_kspace`. ``maps`` given (complex,
    multi-coil) are used instead of an estimate.
    """
    given, maps = maps, None
    images = ifft2c(lr_observed)
    if in_chans == 1:
        image = rss(images)
    else:
        z = images
        if lr_observed.shape[1] > 1:
            with torch.autocast(device_type=lr_observed.device.type, enabled=False):
                maps = estimate_maps(lr_observed, mask) if given is None else given
                z = sense_combine(images, maps)
        image = torch.cat([z.real, z.imag], dim=1)
    dc: Dict[str, torch.Tensor] = {}
    if uses_dc:
        dc = {"measured_kspace": lr_observed, "mask": mask}
        if maps is not None:
            dc["maps"] = maps
    return NetworkInput(image, maps, dc)


def check_map_settings(coil_maps: str, challenge: Optional[str], in_chans: int, acquisition: Any,
                       hr_crop: Optional[Sequence[int]], lambda_phase: float = 0.0, stores_images: bool = True) -> None:
    """At start-up: the run's coil maps (``rss``, ``learned``, ``espirit``) suit its data and its mask, and
    the phase loss has the HR images it needs (compact shards, ``stores_images=False``, have none)."""
    if coil_maps != "rss" and challenge == "singlecoil":
        raise ValueError(f"coil_maps={coil_maps!r} needs multicoil data; this run is singlecoil (use coil_maps: rss)")
    if lambda_phase > 0 and not stores_images:
        raise ValueError("model.lambda_phase needs the HR coil images, which compact shards do not store; "
                         "prepare shards without --compact_scale, or set model.lambda_phase 0")
    if in_chans == 2 and challenge == "multicoil" and acquisition.mask_func is not None and hr_crop is not None:
        acquisition.check_calibration(hr_crop, "mode='complex' on multicoil data",  # maps: whole slices
                                      2 * ESPIRIT_KERNEL if coil_maps == "espirit" else 1)
