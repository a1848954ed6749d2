"""The one acquisition object: configured and validated once, simulate, A and Aᴴ, checkpoint specs."""

import numpy as np
import pytest
import torch

from helpers.adjoint import assert_adjoint
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.degradation import reference_forward
from iconet_fastmri.physics.fft import ifft2c
from iconet_fastmri.physics.masks import MaskConfig, mask_seed
from iconet_fastmri.physics.sense import estimate_maps_rss


def _images(b, c, h, w, seed=0):
    return torch.randn(b, c, h, w, dtype=torch.complex64, generator=torch.Generator().manual_seed(seed))


def test_simulate_is_the_operator_composition_of_the_readme():
    """y = M · T · F · x with T the centred block times sqrt(hw/HW): checked with numpy, step by step."""
    acq = Acquisition(2, MaskConfig(name="random", accelerations=[4], center_fractions=[0.25]))
    x = _images(2, 3, 16, 20)
    deg = acq.simulate(x)  # masks drawn by the acquisition itself
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    block = k[..., 4:12, 5:15] * np.sqrt(8 * 10 / (16 * 20))
    np.testing.assert_allclose(deg.lr_kspace.numpy(), block, atol=2e-6)
    np.testing.assert_allclose(deg.lr_observed.numpy(), block * deg.mask.numpy(), atol=2e-6)
    assert deg.mask.shape == (2, 1, 8, 10) and 0 < float(deg.mask.mean()) < 1


def test_settings_are_validated_once_at_construction():
    with pytest.raises(ValueError, match="unsupported scale 3"):
        Acquisition(3)
    with pytest.raises(ValueError, match="noise_std must be a number >= 0"):
        Acquisition(2, noise_std=-0.1)
    with pytest.raises(ValueError, match="no_such_step"):
        Acquisition(2, kspace_steps=[{"name": "no_such_step"}])
    with pytest.raises(ValueError, match="not divisible by the scale 4"):
        Acquisition(4).check_grid((30, 32))
    with pytest.raises(ValueError, match="larger than hr_crop"):
        Acquisition(2).check_grid((32, 32), (64, 32))


def test_draw_mask_is_seeded_per_slice_and_reseedable():
    acq = Acquisition(2, MaskConfig(name="random", accelerations=[4]))
    seed = mask_seed("file1.h5", 3)
    a, num_low = acq.draw_mask((16, 16), seed=seed)
    b, _ = acq.draw_mask((16, 16), seed=seed)
    assert torch.equal(a, b) and a.shape == (16, 16) and num_low > 0
    acq.reseed(7)
    first = acq.draw_mask((16, 16))[0]
    acq.reseed(7)
    assert torch.equal(first, acq.draw_mask((16, 16))[0])
    full, width = Acquisition(2).draw_mask((4, 6))
    assert torch.equal(full, torch.ones(4, 6)) and width == 6


@pytest.mark.parametrize("coils,image_grid", [(1, (8, 10)), (1, (16, 20)), (3, (8, 10)), (3, (16, 20))])
def test_the_operator_is_adjoint_and_matches_simulate(coils, image_grid):
    """A = M · F · T · S from any stage grid to the LR samples, and Aᴴ, through the shared check."""
    acq = Acquisition(2)
    mask = (torch.rand(1, 1, 8, 10, generator=torch.Generator().manual_seed(1)) > 0.5).to(torch.float64)
    maps = None
    if coils > 1:
        raw = _images(1, coils, *image_grid, seed=3).to(torch.complex128)
        maps = raw / raw.abs().pow(2).sum(1, keepdim=True).sqrt()
    op = acq.operator(mask, maps, image_shape=image_grid)
    assert_adjoint(op.forward, op.adjoint, x_shape=(1, 1, *image_grid), y_shape=(1, coils, 8, 10))
    if coils == 1 and image_grid == (16, 20):  # single-coil A on the HR grid is the simulation's M T F
        x = _images(1, 1, 16, 20, seed=5)
        deg = acq.simulate(x, mask.float())
        torch.testing.assert_close(op.forward(x.to(torch.complex128)).to(torch.complex64), deg.lr_observed,
                                   atol=2e-6, rtol=0)


def test_estimate_maps_is_the_rss_estimate():
    deg = Acquisition(2).simulate(_images(2, 4, 16, 16, seed=2), torch.ones(2, 1, 8, 8))
    torch.testing.assert_close(Acquisition.estimate_maps(deg.lr_observed, deg.mask),
                               estimate_maps_rss(deg.lr_observed, deg.mask))


def test_steps_act_on_the_acquired_samples_only():
    gain = lambda k, m: k * 2.0 + 1.0  # noqa: E731 - the +1 would fill unacquired samples
    acq = Acquisition(2, kspace_steps=[gain])
    x, mask = _images(1, 2, 16, 16, seed=4), (torch.rand(1, 1, 8, 8) > 0.5).float()
    deg = acq.simulate(x, mask)
    ref = reference_forward(x, mask, 2, steps=[gain])
    torch.testing.assert_close(deg.lr_observed, ref.lr_observed)
    assert torch.all(deg.lr_observed[..., mask[0, 0] == 0] == 0)
    torch.testing.assert_close(deg.lr_input, ifft2c(deg.lr_observed).abs().pow(2).sum(1, keepdim=True).sqrt())


def test_spec_round_trip_and_with_mask():
    acq = Acquisition(4, {"name": "equispaced", "accelerations": [2], "center_fractions": [0.25]}, noise_std=0.01,
                      kspace_steps=[])
    again = Acquisition.from_spec(acq.spec())
    assert again.spec() == acq.spec() and again.scale == 4 and again.mask.name == "equispaced"
    other = acq.with_mask(MaskConfig(name="random", accelerations=[3]))
    assert other.mask.name == "random" and other.noise_std == 0.01 and other.scale == 4
    assert acq.mask.name == "equispaced"  # with_mask leaves the original alone


def test_a_checkpoint_spec_cannot_import_code():
    """Only registered names come from a checkpoint: a dotted path is refused, naming it."""
    spec = Acquisition(2).spec()
    bad_mask = dict(spec, mask={"name": "os.system", "accelerations": [4]})
    with pytest.raises(ValueError, match="names the mask 'os.system'.*not registered"):
        Acquisition.from_spec(bad_mask, where="checkpoint x.ckpt")
    bad_step = dict(spec, kspace_steps=[{"name": "my_steps.Evil"}])
    with pytest.raises(ValueError, match="k-space step 'my_steps.Evil'"):
        Acquisition.from_spec(bad_step)
