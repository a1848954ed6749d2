"""LR acquisition simulation against independent numpy / fastmri references."""

import numpy as np
import pytest
import torch

import fastmri
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.operators import lr_shape_for, sinc_upsample
from iconet_fastmri.physics.fft import fft2c, ifft2c, to_real_view
from iconet_fastmri.physics.masks import create_mask


def _images(b, c, h, w, seed=0, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, dtype=dtype, generator=g)


def _np_centred(x, inverse=False):
    f = np.fft.ifft2 if inverse else np.fft.fft2
    ax = (-2, -1)
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax)


def _np_reference(x, mask, scale):
    """Independent numpy implementation of the forward model."""
    x = x.numpy().astype(np.complex128)
    H, W = x.shape[-2:]
    h, w = H // scale, W // scale
    k = _np_centred(x)
    r0, c0 = H // 2 - h // 2, W // 2 - w // 2
    lr_k = k[..., r0 : r0 + h, c0 : c0 + w] * np.sqrt(h * w / (H * W))
    obs = lr_k * mask.numpy()
    clean = np.sqrt((np.abs(_np_centred(lr_k, True)) ** 2).sum(1, keepdims=True))
    zf = np.sqrt((np.abs(_np_centred(obs, True)) ** 2).sum(1, keepdims=True))
    hr = np.sqrt((np.abs(x) ** 2).sum(1, keepdims=True))
    return lr_k, obs, clean, zf, hr


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("grid", [(32, 40), (24, 36), (12, 20)])
def test_matches_numpy_reference(scale, coils, grid):
    H, W = grid
    if H % scale or W % scale:
        pytest.skip("grid not divisible")
    x = _images(3, coils, H, W)
    lr = lr_shape_for(grid, scale)
    mask = (torch.rand(3, 1, *lr, generator=torch.Generator().manual_seed(1)) > 0.4).float()
    out = Acquisition(scale)(x, mask)
    lr_k, obs, clean, zf, hr = _np_reference(x, mask, scale)
    np.testing.assert_allclose(out.lr_kspace.numpy(), lr_k, atol=2e-6)
    np.testing.assert_allclose(out.lr_observed.numpy(), obs, atol=2e-6)
    np.testing.assert_allclose(out.lr_clean.numpy(), clean, atol=2e-6)
    np.testing.assert_allclose(out.lr_input.numpy(), zf, atol=2e-6)
    np.testing.assert_allclose(out.hr_target.numpy(), hr, atol=2e-6)
    assert out.stage_targets[-1] is out.hr_target
    assert len(out.stage_targets) == (1 if scale == 2 else 2)
    if coils == 1:
        np.testing.assert_allclose(
            out.lr_input_complex.numpy(), _np_centred(obs, inverse=True), atol=2e-6
        )
    else:
        assert out.lr_input_complex is None


def test_hr_target_equals_fastmri_rss_and_abs():
    x = _images(2, 5, 16, 16)
    out = Acquisition(2)(x)
    ref = fastmri.rss_complex(to_real_view(x), dim=1)
    assert torch.allclose(out.hr_target[:, 0], ref, atol=1e-6)
    single = Acquisition(2)(x[:, :1])
    assert torch.allclose(single.hr_target[:, 0], fastmri.complex_abs(to_real_view(x[:, 0])), atol=1e-6)


def test_x4_intermediate_target_is_cut_from_the_same_kspace():
    x = _images(2, 3, 32, 24)
    out = Acquisition(4)(x)
    mid = out.stage_targets[0]
    assert mid.shape == (2, 1, 16, 12)
    _, _, clean2, _, _ = _np_reference(x, torch.ones(1), 2)
    np.testing.assert_allclose(mid.numpy(), clean2, atol=2e-6)
    assert [t.shape[-2:] for t in out.rec_targets] == [(8, 6), (16, 12)]
    assert out.rec_targets[0] is out.lr_clean


@pytest.mark.parametrize("scale", [2, 4])
def test_intensity_is_preserved(scale):
    x = torch.full((2, 1, 16, 24), 2.5 - 1.0j, dtype=torch.complex64)
    out = Acquisition(scale)(x)
    expected = abs(2.5 - 1.0j)
    assert torch.allclose(out.lr_clean, torch.full_like(out.lr_clean, expected), atol=1e-5)
    assert torch.allclose(out.hr_target, torch.full_like(out.hr_target, expected), atol=1e-5)
    for t in out.stage_targets:
        assert torch.allclose(t, torch.full_like(t, expected), atol=1e-5)
    up = sinc_upsample(out.lr_clean_complex, (16, 24))
    assert torch.allclose(up, x, atol=1e-5)


OUTPUTS = ("hr_target", "lr_kspace", "lr_observed", "lr_clean", "lr_input", "lr_input_complex", "lr_clean_complex")


@pytest.mark.parametrize("coils,noise,with_steps", [(3, False, False), (1, True, False), (3, True, True)])
def test_fast_path_equals_the_reference_path(coils, noise, with_steps):
    """The fast path (shifts folded away) gives every output of the readable reference, noise draw included."""
    from iconet_fastmri.physics.degradation import fast_forward, reference_forward

    x = _images(2, coils, 32, 48, seed=4)
    mask = (torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    n = _images(2, coils, 8, 12, seed=9) * 0.05 if noise else None
    steps = [lambda k, m: k * 1.5 + 0.01] if with_steps else []
    fast = fast_forward(x, mask, 4, n, steps, complex_images=True)
    ref = reference_forward(x, mask, 4, n, steps)
    for name in OUTPUTS:
        a, b = getattr(fast, name), getattr(ref, name)
        if coils > 1 and name.endswith("complex"):
            b = ifft2c(ref.lr_observed if name == "lr_input_complex" else ref.lr_kspace)
        assert torch.allclose(a, b, atol=2e-6), name
    for a, b in zip(fast.stage_targets, ref.stage_targets):
        assert torch.allclose(a, b, atol=2e-6)
    rss_only = fast_forward(x, mask, 4, n, steps)  # multi-coil default: no complex LR images formed
    for name in ("hr_target", "lr_kspace", "lr_observed", "lr_clean", "lr_input"):
        assert torch.allclose(getattr(rss_only, name), getattr(ref, name), atol=2e-6), name


def test_odd_lr_grid_uses_exact_general_path():
    x = _images(1, 2, 12, 20, seed=5)  # x4 -> 3 x 5 LR grid
    mask = torch.ones(1, 1, 3, 5)
    out = Acquisition(4)(x, mask)
    _, _, clean, _, _ = _np_reference(x, mask, 4)
    np.testing.assert_allclose(out.lr_clean.numpy(), clean, atol=2e-6)


def test_batched_equals_per_sample_and_mask_func():
    x = _images(3, 2, 16, 16, seed=6)
    deg = Acquisition(2, mask=create_mask("random", accelerations=[4], seed=0))
    out = deg(x)
    assert out.mask.shape == (3, 1, 8, 8)
    for i in range(3):
        single = Acquisition(2)(x[i : i + 1], out.mask[i])
        assert torch.allclose(single.lr_input, out.lr_input[i : i + 1], atol=1e-6)


def test_noise_only_on_acquired_samples():
    torch.manual_seed(0)
    x = _images(4, 1, 64, 64, seed=7)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., ::2] = 1
    clean = Acquisition(2)(x, mask)
    noisy = Acquisition(2, noise_std=0.1)(x, mask)
    diff = noisy.lr_observed - clean.lr_observed
    assert diff[..., 1::2].abs().max() == 0
    std = diff[..., ::2].abs().pow(2).mean().sqrt()
    assert std == pytest.approx(0.1, rel=0.05)


def test_size_and_scale_errors():
    with pytest.raises(ValueError, match=r"30x32 is not divisible by the scale 4"):
        Acquisition(4)(_images(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"unsupported scale 3"):
        Acquisition(3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Acquisition(2)(torch.zeros(8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="does not fit the LR grid"):
        Acquisition(2)(_images(1, 1, 8, 8), torch.ones(3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _images(2, 4, 32, 32)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    cpu = Acquisition(2)(x, mask)
    gpu = Acquisition(2)(x.cuda(), mask.cuda())
    for name in ("lr_kspace", "lr_clean", "lr_observed", "lr_input", "hr_target"):
        assert torch.allclose(getattr(cpu, name), getattr(gpu, name).cpu(), atol=1e-5), name
    assert torch.allclose(fft2c(x), fft2c(x.cuda()).cpu(), atol=1e-4)
    assert torch.allclose(ifft2c(x), ifft2c(x.cuda()).cpu(), atol=1e-4)


def test_gpu_rss_reduction_equals_fastmri_rss_and_has_a_finite_gradient_at_zero():
    """The one-kernel RSS that non-CPU devices use (operators._rss_norm), checked on the CPU."""
    from iconet_fastmri.physics.operators import _rss_norm, rss

    x = _images(3, 15, 12, 10)
    ref = fastmri.rss_complex(to_real_view(x), dim=1)
    assert torch.allclose(_rss_norm(x, 1, keepdim=False), ref, atol=1e-6)
    assert torch.allclose(_rss_norm(x, 1, keepdim=True), rss(x), atol=1e-6)
    z = torch.zeros(1, 2, 3, 3, dtype=torch.complex64, requires_grad=True)
    _rss_norm(z, 1, keepdim=True).sum().backward()
    assert torch.isfinite(torch.view_as_real(z.grad)).all()


@pytest.mark.parametrize("coils,scale", [(1, 2), (4, 2), (4, 4), (1, 4)])
def test_chunked_cpu_path_equals_the_whole_batch(monkeypatch, coils, scale):
    """Large CPU batches run their HR part in chunks into whole-batch buffers: same outputs."""
    import iconet_fastmri.physics.degradation as degradation

    x = _images(5, coils, 32, 24)
    mask = (torch.rand(5, 1, 32 // scale, 24 // scale, generator=torch.Generator().manual_seed(3)) > 0.4).float()
    whole = Acquisition(scale)(x, mask)
    sample = x[0].numel() * x.element_size()
    monkeypatch.setattr(degradation, "CHUNK_ABOVE_BYTES", sample)  # anything above one sample
    monkeypatch.setattr(degradation, "CHUNK_BYTES", 2 * sample)  # chunks of 2 (and a tail)
    assert len(degradation._chunks(x)) > 1
    chunked = Acquisition(scale)(x, mask)
    for name in ("hr_target", "lr_kspace", "lr_observed", "lr_clean", "lr_input",
                 "lr_input_complex", "lr_clean_complex"):
        a, b = getattr(chunked, name), getattr(whole, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6), name
    for a, b in zip(chunked.stage_targets, whole.stage_targets):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("coils,scale", [(1, 2), (4, 2), (1, 4), (4, 4)])
def test_the_acquisition_from_stored_lr_kspace_equals_the_simulation(coils, scale):
    """Compact shards store T F x and the stage targets; the rest of the acquisition (mask, noise)
    computed from them equals the simulation from the HR images."""
    from iconet_fastmri.physics.masks import MaskConfig

    g = torch.Generator().manual_seed(coils + scale)
    x = torch.randn(2, coils, 64, 64, dtype=torch.complex64, generator=g)
    acq = Acquisition(scale, MaskConfig(), noise_std=0.05)
    mask = acq.draw_mask(acq.lr_shape((64, 64)), seed=3)[0][None, None].expand(2, 1, -1, -1)
    torch.manual_seed(0)
    a = acq.simulate(x, mask)
    torch.manual_seed(0)
    b = acq.simulate(torch.empty(2, coils, 0, 0, dtype=torch.complex64), mask, (a.lr_kspace, a.stage_targets))
    for field in ("lr_kspace", "lr_observed", "lr_clean", "lr_input", "hr_target"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-6)
    assert [t.shape for t in b.rec_targets] == [t.shape for t in a.rec_targets]
    assert (b.lr_input_complex is None) == (a.lr_input_complex is None)
