"""Training patches cut after the acquisition (models/patches.py, issue 22 item 1).

A patch must be exactly the whole slice's sample restricted to its rows: the same
aliasing, targets and coil maps, a measured k-space that is the patch image under the
mask (so DC on the patch is exact), and the whole slice's normalisation scale. Before
issue 22 the patch was cut from the HR image first and normalised by its own mean
magnitude, so a patch of background was divided by its noise level.
"""

import pytest
import torch

from iconet_fastmri.data.batching import collate_samples
from iconet_fastmri.data.transforms import IconetSample
from iconet_fastmri.models import UnetSR
from iconet_fastmri.models.common import SROutput, per_slice_scale
from iconet_fastmri.models.network_input import network_input
from iconet_fastmri.models.patches import cut_patches, whole_slices
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.fft import fft2c, ifft2c
from iconet_fastmri.pl_modules import IconetModule


def _object_in_the_middle_rows(batch, coils, H, W, seed=0):
    """Complex coil images, zero outside rows H/4..3H/4 (background above and below)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, coils, H, W, dtype=torch.complex64)
    x[..., H // 4: 3 * H // 4, :] = torch.randn(batch, coils, H // 2, W, dtype=torch.complex64, generator=g)
    return x


def _column_mask(batch, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = (torch.rand(batch, 1, 1, w, generator=g) < 0.3).float()
    cols[..., w // 2 - 2: w // 2 + 2] = 1  # calibration lines
    return cols.expand(batch, 1, h, w).contiguous()


def _boxes(starts, size):
    return torch.tensor([[r, 0, size[0], size[1]] for r in starts], dtype=torch.int64)


@pytest.mark.parametrize("scale", [2, 4])
def test_a_patch_is_the_whole_slice_restricted_to_its_rows(scale):
    H, W = 64, 32
    x = _object_in_the_middle_rows(2, 1, H, W)
    deg = Acquisition(scale).simulate(x, _column_mask(2, H // scale, W // scale))
    inputs = network_input(deg, in_chans=2, uses_dc=True)
    patch = _boxes([0, 24], (16, W))  # rows 0-16 are pure background
    cut, cut_inputs, _ = cut_patches(deg, inputs, patch)
    for b, r0 in enumerate([0, 24]):
        def rows(t):
            f = H // t.shape[-2]
            return t[b, ..., r0 // f: (r0 + 16) // f, :]
        assert torch.equal(cut.hr_target[b], rows(deg.hr_target))
        assert torch.equal(cut.lr_input[b], rows(deg.lr_input))
        assert torch.equal(cut.lr_clean[b], rows(deg.lr_clean))
        assert torch.equal(cut_inputs.image[b], rows(inputs.image))
        for got, whole in zip(cut.stage_targets + cut.rec_targets, deg.stage_targets + deg.rec_targets):
            assert torch.equal(got[b], rows(whole))
    assert cut.lr_input.shape[-2:] == (16 // scale, W // scale)


@pytest.mark.parametrize("coils", [1, 3])
def test_the_measured_kspace_of_a_patch_is_its_image_under_the_mask(coils):
    H, W, s = 64, 32, 2
    x = _object_in_the_middle_rows(2, coils, H, W, seed=1)
    mask = _column_mask(2, H // s, W // s, seed=1)
    deg = Acquisition(s).simulate(x, mask)  # noise-free
    inputs = network_input(deg, in_chans=2, uses_dc=True)
    patch = _boxes([8, 40], (16, W))
    cut, cut_inputs, _ = cut_patches(deg, inputs, patch)
    # A_patch(x_patch) = M · F(rows of the clean LR coil images): what DC on the patch assumes.
    clean = ifft2c(deg.lr_kspace)
    expected = torch.stack([fft2c(clean[b, :, r // s:(r + 16) // s, :]) for b, r in enumerate([8, 40])])
    m = cut.mask
    torch.testing.assert_close(cut.lr_observed, expected * m, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert not cut.lr_observed[(m == 0).expand_as(cut.lr_observed)].any()  # unacquired lines stay exactly 0
    assert torch.equal(cut_inputs.dc["measured_kspace"], cut.lr_observed) and torch.equal(cut_inputs.dc["mask"], m)
    if coils > 1:  # the maps of the whole slice, cut with it
        assert torch.equal(cut_inputs.maps, torch.stack([inputs.maps[b, :, r // s:(r + 16) // s] for b, r in enumerate([8, 40])]))
        assert cut_inputs.dc["maps"] is cut_inputs.maps


def test_a_patch_carries_the_whole_slice_scale_not_its_own():
    H, W = 64, 32
    x = _object_in_the_middle_rows(2, 1, H, W, seed=2)
    deg = Acquisition(2).simulate(x, _column_mask(2, H // 2, W // 2, seed=2))
    inputs = network_input(deg, in_chans=1)
    cut, cut_inputs, _ = cut_patches(deg, inputs, _boxes([0, 0], (16, W)))
    whole = per_slice_scale(inputs.image)
    torch.testing.assert_close(cut_inputs.norm_scale, whole, rtol=0, atol=0)
    own = per_slice_scale(cut_inputs.image)  # what a patch-only rule would divide by
    assert (own < 0.5 * whole).all(), "the background patch's own scale should be far below the slice's"


def test_whole_slices_and_no_patch_pass_through():
    x = _object_in_the_middle_rows(1, 1, 32, 32)
    deg = Acquisition(2).simulate(x, _column_mask(1, 16, 16))
    inputs = network_input(deg, in_chans=1)
    for patch in (None, torch.tensor([[0, 0, 32, 32]])):
        got, got_inputs, extra = cut_patches(deg, inputs, patch, also=([deg.hr_target],))
        assert got is deg and got_inputs is inputs and extra[0][0] is deg.hr_target
    assert whole_slices(torch.tensor([[0, 0, 32, 32]]), (32, 32))
    assert not whole_slices(torch.tensor([[0, 0, 16, 32]]), (32, 32))


def test_misaligned_or_oversized_patches_are_errors():
    x = _object_in_the_middle_rows(1, 1, 32, 32)
    deg = Acquisition(2).simulate(x, _column_mask(1, 16, 16))
    inputs = network_input(deg, in_chans=1)
    with pytest.raises(ValueError, match="multiples of the scale 2"):
        cut_patches(deg, inputs, torch.tensor([[3, 0, 16, 32]]))
    with pytest.raises(ValueError, match="do not fit the HR grid"):
        cut_patches(deg, inputs, torch.tensor([[24, 0, 16, 32]]))


class _Spy(UnetSR):
    seen = []

    def run(self, x, *args, **kw):
        out = super().run(x, *args, **kw)
        _Spy.seen.append(x.shape)
        return out


def test_the_training_step_feeds_the_patch_with_the_whole_slice_scale():
    H, W = 64, 32
    hr = _object_in_the_middle_rows(2, 1, H, W, seed=3)
    mask = _column_mask(2, H // 2, W // 2, seed=3)
    samples = [IconetSample(hr_images=hr[b], mask=mask[b], target=torch.empty(0), fname=f"f{b}.h5", slice_num=0,
                            max_value=1.0, num_low_frequencies=4, patch=torch.tensor([r, 0, 16, W]))
               for b, r in enumerate([0, 32])]
    batch = collate_samples(samples)
    module = IconetModule(_Spy(scale=2, chans=4, num_pool_layers=1), acquisition=Acquisition(2))
    outputs = []
    module.forward = lambda inputs, _f=module.forward: outputs.append(_f(inputs)) or outputs[-1]
    module.training_step(batch, 0)
    out: SROutput = outputs[-1]
    whole = per_slice_scale(module.acquisition.simulate(hr, mask).lr_input)
    torch.testing.assert_close(out.norm_scale, whole, rtol=0, atol=0)
    assert _Spy.seen[-1][-2:] == (8, W // 2)  # the network ran on the patch only
    assert out.sr.shape[-2:] == (16, W)
