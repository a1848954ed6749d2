"""Learned coil-sensitivity maps: the RSS calibration estimate refined by a U-Net, trained end to end.

:class:`LearnedMaps` follows E2E-VarNet's sensitivity model (fastMRI's
``SensitivityModel``): low-resolution coil images from the fully sampled
centre of the acquired k-space, refined coil by coil by fastMRI's
``NormUnet`` (real/imag channels, per-image mean/std normalisation), then
divided by their root-sum-of-squares. Two differences, both for our data:

* the calibration images come from
  :func:`~iconet_fastmri.physics.sense.calibration_images` (1D and 2D masks;
  fastMRI's reads one mask row, which suits only 1D column masks);
* the refinement is a residual with a learned gate initialised at 0, so an
  untrained model gives exactly :func:`~iconet_fastmri.physics.sense.estimate_maps_rss`
  and training moves away from it only as far as the loss asks; and coils that
  are all zero (the zero padding that batches volumes of different coil
  counts) are skipped, since ``NormUnet`` divides by each image's standard
  deviation.
"""

from __future__ import annotations

import torch
from fastmri.models.varnet import NormUnet
from torch import nn

from ..physics.sense import calibration_images, normalise_maps

__all__ = ["LearnedMaps"]


class LearnedMaps(nn.Module):
    """Coil maps ``(B, C, h, w)`` complex from acquired LR k-space and its mask, ``Σ_c |S_c|² = 1``.

    Args:
        chans: channels of the refinement U-Net's first level [E2E-VarNet: 8].
        num_pools: its pooling levels [E2E-VarNet: 4]; the LR grid should be at
            least ``2**num_pools`` on each side (``NormUnet`` pads to a multiple of 16).
        eps: floor of the RSS (maps are 0 where the coil images are).
    """

    def __init__(self, chans: int = 8, num_pools: int = 4, eps: float = 1e-12) -> None:
        super().__init__()
        if chans < 1 or num_pools < 1:
            raise ValueError(f"LearnedMaps needs chans >= 1 and num_pools >= 1, got {chans}, {num_pools}")
        self.unet = NormUnet(chans, num_pools, in_chans=2, out_chans=2)
        self.gate = nn.Parameter(torch.zeros(()))
        self.eps = eps

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``kspace`` centred acquired LR k-space ``(B, C, h, w)`` complex; ``mask`` ``(B, 1, h, w)``."""
        images = calibration_images(kspace, mask)
        valid = images.abs().flatten(2).amax(dim=-1) > 0  # (B, C): zero-padded coils stay zero
        refined = images
        if bool(valid.any()):
            picked = images[valid]  # (N, h, w)
            correction = self.unet(torch.view_as_real(picked).unsqueeze(1)).squeeze(1)
            update = torch.zeros_like(images)
            update[valid] = torch.view_as_complex(correction.contiguous()).to(images.dtype)
            refined = images + self.gate.to(images.real.dtype) * update
        return normalise_maps(refined, self.eps)
