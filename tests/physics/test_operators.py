"""k-space operators: adjointness, the intensity rule and data consistency, against hand computations."""

import pytest
import torch

from helpers.adjoint import assert_adjoint
from iconet_fastmri.physics.fft import fft2c
from iconet_fastmri.physics.operators import (
    KSpaceTruncation,
    crop_kspace,
    pad_kspace,
)
from iconet_fastmri.physics.sense import sense_data_consistency


def data_consistency(image, measured, mask, lam=None):
    """The package's one DC routine, single-coil (no maps)."""
    return sense_data_consistency(image, measured, mask, None, lam)


def _images(b, c, h, w, seed=0, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, dtype=dtype, generator=g)


@pytest.mark.parametrize("big,small", [((16, 24), (8, 12)), ((15, 9), (5, 3)), ((12, 20), (3, 5))])
def test_crop_pad_adjoint(big, small):
    x = _images(2, 3, *big, seed=2, dtype=torch.complex128)
    y = _images(2, 3, *small, seed=3, dtype=torch.complex128)
    assert_adjoint(lambda k: crop_kspace(k, small), lambda k: pad_kspace(k, big), x, y, rtol=1e-12)
    a2 = (small[0] * small[1]) / (big[0] * big[1])
    assert torch.allclose(crop_kspace(pad_kspace(y, big), small), a2 * y)


@pytest.mark.parametrize("hr,scale", [((16, 24), 2), ((32, 48), 4), ((18, 30), 2), ((36, 60), 4)])
def test_truncation_operator_is_adjoint(hr, scale):
    op = KSpaceTruncation.for_scale(hr, scale)
    assert op.lr_shape == (hr[0] // scale, hr[1] // scale)
    x = _images(2, 3, *hr, seed=4, dtype=torch.complex128)
    y = _images(2, 3, *op.lr_shape, seed=5, dtype=torch.complex128)
    assert_adjoint(op, op.adjoint, x, y, rtol=1e-12)
    # float32, the dtype the models run in: the same up to float32 rounding.
    assert_adjoint(op, op.adjoint, x.to(torch.complex64), y.to(torch.complex64), rtol=1e-6)
    # The same maps as the functions, and the intensity rule: T Tᴴ = (hw / HW) I.
    assert torch.equal(op.forward(x), crop_kspace(x, op.lr_shape))
    assert torch.allclose(op(op.adjoint(y)), y / scale**2, atol=1e-6)
    with pytest.raises(ValueError, match="expects k-space on the grid"):
        op.adjoint(x)
    with pytest.raises(ValueError, match="larger than the HR grid"):
        KSpaceTruncation((8, 8), (16, 8))


@pytest.mark.parametrize("grid", [(8, 12), (16, 24)])
def test_hard_and_soft_data_consistency(grid):
    lr = (8, 12)
    g = torch.Generator().manual_seed(8)
    measured_full = torch.randn(2, 1, *lr, dtype=torch.complex64, generator=g)
    mask = (torch.rand(2, 1, *lr, generator=g) > 0.5).float()
    measured = measured_full * mask
    image = torch.randn(2, 1, *grid, dtype=torch.complex64, generator=g)
    out = data_consistency(image, measured, mask)
    k_lr = crop_kspace(fft2c(out), lr)
    sampled = mask.bool().expand_as(k_lr)
    assert torch.allclose(k_lr[sampled], measured[sampled], atol=1e-5)
    # Unsampled LR samples and everything outside the LR block are untouched.
    k_before = crop_kspace(fft2c(image), lr)
    assert torch.allclose(k_lr[~sampled], k_before[~sampled], atol=1e-5)
    if grid != lr:
        outside = fft2c(out) - fft2c(image)
        outside_lr = pad_kspace(crop_kspace(outside, lr), grid) / (lr[0] * lr[1] / (grid[0] * grid[1]))
        assert torch.allclose(outside, outside_lr, atol=1e-5)
    # Soft DC: lambda = 0 leaves the image alone, a huge lambda is hard DC.
    assert torch.allclose(data_consistency(image, measured, mask, torch.tensor(0.0)), image, atol=1e-5)
    assert torch.allclose(data_consistency(image, measured, mask, torch.tensor(1e8)), out, atol=1e-4)
