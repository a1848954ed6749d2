"""An independent data-consistency reference for single-coil images (no SENSE operator).

It was the package's second DC routine; the package keeps one
(:func:`iconet_fastmri.physics.sense.sense_data_consistency`, through ``A``),
and this plain k-space form checks it.
"""

from typing import Optional

import torch

from iconet_fastmri.physics.fft import fft2c, ifft2c
from iconet_fastmri.physics.operators import crop_kspace, intensity_factor, pad_kspace


def data_consistency(
    image: torch.Tensor,
    measured: torch.Tensor,
    mask: torch.Tensor,
    lam: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """k-space data consistency of a complex image against measured LR samples.

    The image may live on a finer grid than the measurements (a later ICONet
    stage): then the measured block is the intensity-preserving crop ``A``
    of its k-space, and the correction is applied through the adjoint pair
    (:func:`crop_kspace`, :func:`pad_kspace`).

    Args:
        image: complex image ``(B, C, H', W')``.
        measured: centred measured LR k-space ``(B, C, h, w)`` (zero where not sampled).
        mask: sampling mask broadcastable to ``(B, C, h, w)``, 1 where acquired.
        lam: ``None`` for hard DC (measured samples replace the estimate where
            ``mask == 1``); otherwise a non-negative tensor ``λ`` for soft DC,
            ``k <- k + mask * λ / (1 + λ) * (y - k)`` (``λ -> ∞`` is hard DC).

    Returns:
        The corrected complex image, same shape as ``image``.
    """
    grid = (image.shape[-2], image.shape[-1])
    lr = (measured.shape[-2], measured.shape[-1])
    kspace = fft2c(image)
    mask = mask.to(torch.float32)
    if grid == lr:
        residual = mask * (measured - kspace)
        weight = 1.0 if lam is None else lam / (1.0 + lam)
        return ifft2c(kspace + weight * residual)
    a2 = intensity_factor(lr, grid) ** 2
    residual = mask * (measured - crop_kspace(kspace, lr))
    weight = 1.0 if lam is None else lam / (1.0 + lam)
    return ifft2c(kspace + pad_kspace(weight * residual, grid) / a2)
