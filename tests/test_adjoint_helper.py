"""The shared adjointness check (tests/helpers/adjoint.py) passes true adjoint pairs and fails wrong ones."""

import pytest
import torch

from helpers.adjoint import assert_adjoint, random_like_shape
from iconet_fastmri.physics.fft import fft2c, ifft2c
from iconet_fastmri.physics.operators import crop_kspace, intensity_factor, pad_kspace
from iconet_fastmri.physics.sense import SenseOperator


def _matrix(m, n, dtype=torch.complex128, seed=0):
    return random_like_shape((m, n), dtype, seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_matrix_and_its_conjugate_transpose_pass(dtype):
    a = _matrix(5, 7, dtype)
    lhs, rhs = assert_adjoint(lambda v: a @ v, lambda w: a.conj().T @ w, x_shape=(7,), dtype=dtype)
    assert lhs != 0 and abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_centred_fft_adjoint_is_its_inverse():
    # fft2c is unitary: its adjoint is ifft2c (and the other way round).
    assert_adjoint(fft2c, ifft2c, x_shape=(2, 3, 12, 10))
    assert_adjoint(ifft2c, fft2c, x_shape=(2, 3, 9, 7), seed=5)


def test_complex_transpose_without_conjugation_fails():
    a = _matrix(5, 7)
    with pytest.raises(AssertionError, match=r"not adjoint: <A x, y> = .* but <x, Aᴴ y> = "):
        assert_adjoint(lambda v: a @ v, lambda w: a.T @ w, x_shape=(7,))


def test_zero_pad_with_the_wrong_scale_fails():
    # Truncation multiplies by sqrt(hw / HW); an adjoint that zero-pads without that factor,
    # or with its inverse, is off by hw / HW (here 1/4) or HW / hw.
    big, small = (16, 24), (8, 12)
    a = intensity_factor(small, big)
    assert a == pytest.approx(0.5)
    crop = lambda k: crop_kspace(k, small)  # noqa: E731
    assert_adjoint(crop, lambda k: pad_kspace(k, big), x_shape=(2, 1, *big))
    for wrong in (1.0 / a, 1.0 / a**2):
        with pytest.raises(AssertionError, match="not adjoint"):
            assert_adjoint(crop, lambda k, f=wrong: pad_kspace(k, big) * f, x_shape=(2, 1, *big))


def test_missing_conjugate_of_the_coil_maps_fails():
    # SENSE: Aᴴ y = Σ_c conj(S_c) F⁻¹(Tᴴ(M y_c)); forgetting conj() is a classic bug.
    hr, lr = (16, 24), (8, 12)
    maps = random_like_shape((1, 3, *hr), seed=1)
    mask = (torch.rand(1, 1, *lr, generator=torch.Generator().manual_seed(2)) > 0.4).float()
    op = SenseOperator(maps, mask, lr_shape=lr, image_shape=hr)
    assert_adjoint(op, op.adjoint, x_shape=(1, 1, *hr))

    def no_conj(y):
        return (maps * ifft2c(pad_kspace(y * mask, hr))).sum(dim=1, keepdim=True)

    with pytest.raises(AssertionError, match="not adjoint"):
        assert_adjoint(op, no_conj, x_shape=(1, 1, *hr))


def test_a_tiny_wrong_factor_fails_in_double_precision():
    a = _matrix(6, 4, seed=3)
    fwd, adj = (lambda v: a @ v), (lambda w: a.conj().T @ w)
    with pytest.raises(AssertionError, match="not adjoint"):
        assert_adjoint(fwd, lambda w: adj(w) * (1 + 1e-7), x_shape=(4,))
    # float32 rounding needs a looser rtol, which the caller passes.
    a32 = a.to(torch.complex64)
    assert_adjoint(lambda v: a32 @ v, lambda w: a32.conj().T @ w, x_shape=(4,), dtype=torch.complex64, rtol=1e-6)


def test_shape_errors_and_void_checks_fail():
    a = _matrix(5, 7)
    with pytest.raises(AssertionError, match=r"Aᴴ y has shape \(5,\) but x has shape \(7,\)"):
        assert_adjoint(lambda v: a @ v, lambda w: w, x_shape=(7,))
    with pytest.raises(AssertionError, match=r"A x has shape \(5,\) but y has shape \(4,\)"):
        assert_adjoint(lambda v: a @ v, lambda w: a.conj().T @ w, x_shape=(7,), y_shape=(4,))
    with pytest.raises(AssertionError, match="void adjointness check"):
        assert_adjoint(torch.zeros_like, torch.zeros_like, x_shape=(3, 4))
    with pytest.raises(TypeError, match="needs x or x_shape"):
        assert_adjoint(fft2c, ifft2c)
