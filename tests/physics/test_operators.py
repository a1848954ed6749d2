"""k-space operators: adjointness, the intensity rule and data consistency, against hand computations."""

import pytest
import torch
from fastmri.data.transforms import center_crop

from helpers.adjoint import assert_adjoint
from iconet_fastmri.physics.fft import fft2c, ifft2c
from iconet_fastmri.physics.operators import (
    KSpaceTruncation,
    PhaseEncodeOversampling,
    crop_kspace,
    pad_kspace,
)
from iconet_fastmri.models.measured import oversampled_input
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


def _wide_mask(b, h, wk, seed):
    g = torch.Generator().manual_seed(seed)
    cols = (torch.rand(b, 1, 1, wk, generator=g) < 0.4).float()
    cols[..., wk // 2 - 2: wk // 2 + 2] = 1
    return cols.expand(b, 1, h, wk)


@pytest.mark.parametrize("grid,wide", [((8, 8), 10), ((6, 9), 12), ((8, 8), 8)])
def test_phase_encode_oversampling_is_adjoint_and_is_the_mask_without_oversampling(grid, wide):
    mask = _wide_mask(2, grid[0], wide, seed=1)
    op = PhaseEncodeOversampling(mask, grid)
    x = _images(2, 3, *grid, seed=6, dtype=torch.complex128)
    y = _images(2, 3, grid[0], wide, seed=7, dtype=torch.complex128)
    assert_adjoint(op, op.adjoint, x, y, rtol=1e-12)
    # Pᴴ is fastMRI's centre crop, also for an odd margin: the adjoint of fully sampled k-space is the crop's
    full = PhaseEncodeOversampling(torch.ones(1, 1, grid[0], wide), grid)
    torch.testing.assert_close(full.adjoint(fft2c(y)), fft2c(center_crop(y, grid)), rtol=0, atol=1e-12)
    if wide == grid[1]:  # no oversampling: E is the mask
        torch.testing.assert_close(op(x), x * mask, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least its 8 columns"):
        PhaseEncodeOversampling(torch.ones(1, 1, 8, 6), (8, 8))


@pytest.mark.parametrize("coils", [1, 3])
def test_dc_through_the_wide_grid_restores_the_scan_and_moves_towards_its_samples(coils):
    """A phase-encode oversampled scan (12 columns for an 8-column grid), its outside content subtracted.

    Fully sampled, hard DC of any image gives an LR band equal to the scan's own image cropped to the
    grid (exact; single-coil from the HR grid through the truncation, 3 coils on the LR grid, where
    the maps need no interpolation); undersampled, it halves the samples' residual at least. (That the
    output and some outside content explain the samples exactly: ``tests/entry/test_acquired.py``.)
    """
    h, w, wk = 8, 8, 12
    g = torch.Generator().manual_seed(coils)
    maps = torch.randn(2, coils, h, w, dtype=torch.complex64, generator=g) if coils > 1 else None
    if maps is not None:
        maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    inside = torch.randn(2, 1, h, w, dtype=torch.complex64, generator=g)
    wide = torch.randn(2, coils, h, wk, dtype=torch.complex64, generator=g)  # content outside the field of view
    wide[..., 2:2 + w] = inside if maps is None else maps * inside
    outside = wide.clone()
    outside[..., 2:2 + w] = 0
    grid = (2 * h, 2 * w) if maps is None else (h, w)
    image = torch.randn(2, 1, *grid, dtype=torch.complex64, generator=g)

    def residual(x, op, samples):
        coil_lr = ifft2c(crop_kspace(fft2c(x), (h, w))) * (1 if maps is None else maps)
        return float((op(fft2c(coil_lr)) + fft2c(outside) * op.mask - samples).norm() / samples.norm())

    for mask in (torch.ones(2, 1, h, wk), _wide_mask(2, h, wk, seed=3)):
        op = PhaseEncodeOversampling(mask, (h, w))
        samples = fft2c(wide) * mask
        out = sense_data_consistency(image, samples - fft2c(outside) * mask, mask, maps, None, op)
        if mask.all():
            torch.testing.assert_close(crop_kspace(fft2c(out), (h, w)), fft2c(inside), rtol=0, atol=1e-5)
        assert residual(out, op, samples) < 0.5 * residual(image, op, samples)


def _dc_error_by_outside_rule(reach):
    """Relative error of hard DC through the wide grid on a close estimate, per rule for the outside content."""
    from iconet_fastmri.physics.masks import create_mask

    h, w, wk = 64, 64, 72
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1.125, 1.125, wk), indexing="ij")
    obj = ((xx / reach) ** 2 + (yy / 0.8) ** 2 < 1).float() * (1 + 0.3 * torch.sin(9 * xx) * torch.cos(7 * yy))
    wide = obj.to(torch.complex64)[None, None]
    inside = wide[..., 4:4 + w]
    mask_func = create_mask("random", center_fractions=[0.08], accelerations=[4])
    errors = {"zero-filled": 0.0, "zero": 0.0, "estimate": 0.0}
    for seed in range(6):
        m, _ = mask_func((h, wk), seed=seed)
        m = torch.as_tensor(m, dtype=torch.float32).reshape(h, wk)[None, None]
        op = PhaseEncodeOversampling(m, (h, w))
        samples = fft2c(wide) * m
        estimate = inside + 0.05 * torch.randn(inside.shape, generator=torch.Generator().manual_seed(seed))
        errors["estimate"] += float((estimate - inside).norm() / inside.norm()) / 6
        # The shipped rule (models/measured.py): the samples less those of the outside's zero-filled content.
        inputs, _ = oversampled_input(op.adjoint(samples), samples, m, 2, True, None)
        for rule, measured in (("zero-filled", inputs.dc["measured_kspace"]), ("zero", samples)):
            out = sense_data_consistency(estimate, measured, m, None, None, op)
            errors[rule] += float((out - inside).norm() / inside.norm()) / 6
    return errors


def test_holding_the_outside_at_its_zero_filled_content_is_safer_than_at_zero():
    """docs/ACQUIRED.md: where the anatomy reaches outside the field of view (why scanners oversample), holding
    the outside at zero pushes its signal into the image; at its zero-filled content it costs less. Where the
    object lies inside, zero is exact and the zero-filled content is close to it."""
    reaching = _dc_error_by_outside_rule(reach=1.1)
    assert reaching["zero-filled"] < 0.85 * reaching["zero"]
    inside = _dc_error_by_outside_rule(reach=0.9)
    assert inside["zero"] <= inside["zero-filled"] < 1.15 * inside["zero"]
