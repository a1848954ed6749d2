"""What a network is fed (models/network_input.py): image per mode, coil maps, DC arguments."""

import torch

from iconet_fastmri.models.network_input import network_input
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.fft import ifft2c
from iconet_fastmri.physics.sense import estimate_maps_rss, sense_combine


def _deg(coils, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, coils, 16, 16, dtype=torch.complex64, generator=g)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., ::2] = 1
    mask[..., 3:5] = 1  # a fully sampled centre for the maps
    return Acquisition(2).simulate(x, mask)


def test_magnitude_mode_feeds_the_zero_filled_lr_magnitude():
    deg = _deg(3)
    inputs = network_input(deg, in_chans=1)
    assert inputs.image is deg.lr_input and inputs.maps is None and inputs.dc == {}


def test_complex_single_coil_feeds_real_and_imag_of_the_zero_filled_image():
    deg = _deg(1)
    inputs = network_input(deg, in_chans=2, uses_dc=True)
    z = deg.lr_input_complex
    assert torch.equal(inputs.image, torch.cat([z.real, z.imag], dim=1)) and inputs.maps is None
    assert set(inputs.dc) == {"measured_kspace", "mask"} and inputs.dc["measured_kspace"] is deg.lr_observed


def test_complex_multicoil_sense_combines_with_the_estimator_it_is_given():
    deg = _deg(4)
    inputs = network_input(deg, in_chans=2, uses_dc=True)
    maps = estimate_maps_rss(deg.lr_observed, deg.mask)
    z = sense_combine(ifft2c(deg.lr_observed), maps)
    torch.testing.assert_close(inputs.image, torch.cat([z.real, z.imag], dim=1))
    torch.testing.assert_close(inputs.maps, maps)
    assert inputs.dc["maps"] is inputs.maps
    calls = []

    def uniform(kspace, mask):
        calls.append(kspace.shape)
        return torch.full_like(kspace, 0.5)

    other = network_input(deg, in_chans=2, estimate_maps=uniform)
    assert calls == [deg.lr_observed.shape] and torch.equal(other.maps, torch.full_like(deg.lr_observed, 0.5))
    assert other.dc == {}


def test_a_real_acquisition_gets_the_input_a_simulated_one_gets():
    """measured_input (real LR files, issue 23) equals network_input on the same measured samples."""
    from iconet_fastmri.models.network_input import measured_input

    for coils in (1, 4):
        deg = _deg(coils, seed=coils)
        for in_chans, uses_dc in ((1, False), (2, True)):
            sim = network_input(deg, in_chans, uses_dc)
            real = measured_input(deg.lr_observed, deg.mask, in_chans, uses_dc)
            torch.testing.assert_close(real.image, sim.image, rtol=1e-5, atol=1e-6)
            assert (real.maps is None) == (sim.maps is None) and set(real.dc) == set(sim.dc)
            if sim.maps is not None:
                torch.testing.assert_close(real.maps, sim.maps)
