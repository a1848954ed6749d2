"""Centred FFT against fastmri.fftc and numpy.fft."""

import numpy as np
import pytest
import torch

import fastmri
from iconet_fastmri.physics.fft import checkerboard, fft2c, from_real_view, ifft2c, to_real_view

SHAPES = [(1, 8, 8), (3, 4, 6), (2, 3, 5, 7), (2, 6, 5), (1, 5, 8), (2, 2, 10, 12), (1, 14, 18)]


def _rand(shape, dtype=torch.complex64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g)


def _np_fft2c(x, inverse=False):
    f = np.fft.ifft2 if inverse else np.fft.fft2
    axes = (-2, -1)
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_fastmri(shape):
    x = _rand(shape)
    assert torch.allclose(fft2c(x), from_real_view(fastmri.fft2c(to_real_view(x))), atol=1e-6)
    assert torch.allclose(ifft2c(x), from_real_view(fastmri.ifft2c(to_real_view(x))), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy(shape):
    x = _rand(shape, dtype=torch.complex128)
    np.testing.assert_allclose(fft2c(x).numpy(), _np_fft2c(x.numpy()), atol=1e-12)
    np.testing.assert_allclose(ifft2c(x).numpy(), _np_fft2c(x.numpy(), inverse=True), atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_parseval_and_inverse(shape):
    x = _rand(shape, dtype=torch.complex128, seed=1)
    k = fft2c(x)
    assert torch.allclose(k.abs().pow(2).sum(), x.abs().pow(2).sum(), rtol=1e-12)
    assert torch.allclose(ifft2c(k), x, atol=1e-12)
    assert torch.allclose(fft2c(ifft2c(x)), x, atol=1e-12)


def test_dc_is_centred():
    x = torch.ones(1, 6, 10, dtype=torch.complex64)
    k = fft2c(x)
    assert k[0, 3, 5].real == pytest.approx(np.sqrt(60), rel=1e-6)
    k[0, 3, 5] = 0
    assert k.abs().max() < 1e-5


def test_dtype_under_autocast_and_real_input():
    x = _rand((2, 8, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft2c(x)
    assert y.dtype == torch.complex64
    real = torch.randn(4, 6, dtype=torch.bfloat16)
    assert fft2c(real).dtype == torch.complex64
    assert torch.allclose(fft2c(real), fft2c(real.float().to(torch.complex64)))


def test_real_view_round_trip():
    x = _rand((2, 3, 4))
    assert to_real_view(x).shape == (2, 3, 4, 2)
    assert torch.equal(from_real_view(to_real_view(x)), x)
    with pytest.raises(ValueError, match="size 2"):
        from_real_view(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="complex"):
        to_real_view(torch.zeros(2, 3))


def test_chunked_and_autograd_paths_agree_with_fastmri():
    # Over 32 MiB on the CPU: the chunked in-place path; under autograd: the functional path.
    x = _rand((18, 640, 368), seed=3)
    assert x.numel() * x.element_size() > 32 * 2**20
    ref = from_real_view(fastmri.fft2c(to_real_view(x)))
    assert torch.allclose(fft2c(x), ref, atol=1e-5)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-5)
    small = _rand((2, 3, 16, 12), seed=4).requires_grad_(True)
    out = fft2c(small)
    assert torch.allclose(out.detach(), from_real_view(fastmri.fft2c(to_real_view(small.detach()))), atol=1e-6)
    (out.abs() ** 2).sum().backward()  # |fft2c(x)|^2 summed = |x|^2 summed (unitary): gradient 2x
    assert torch.allclose(small.grad, 2 * small.detach(), atol=1e-5)


def test_patterns_cached_under_inference_mode_serve_autograd_later():
    """A sign pattern first made under inference_mode (validation, inference) must not break a later training step."""
    from iconet_fastmri.physics import fft as fft_module

    fft_module._CHECKERBOARD_CACHE.clear()
    fft_module._INTERLEAVED_CACHE.clear()
    with torch.inference_mode():
        fft2c(torch.randn(2, 1, 14, 18, dtype=torch.complex64))
        checkerboard(6, 10, torch.device("cpu"))
    x = torch.randn(2, 1, 14, 18, dtype=torch.complex64, requires_grad=True)
    ifft2c(fft2c(x) * checkerboard(14, 18, torch.device("cpu"))).abs().sum().backward()
    assert x.grad is not None and torch.isfinite(torch.view_as_real(x.grad)).all()
    assert not checkerboard(6, 10, torch.device("cpu")).is_inference()
