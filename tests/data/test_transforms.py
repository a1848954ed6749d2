"""The slice transform through fastmri's own SliceDataset, against the files' targets."""

import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset

from iconet_fastmri.data.transforms import IconetDataTransform, IconetSample, check_kspace
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.masks import create_mask, mask_seed


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
@pytest.mark.parametrize("scale", [2, 4])
def test_hr_target_equals_file_reconstruction(challenge, scale, singlecoil_dir, multicoil_dir):
    root = singlecoil_dir if challenge == "singlecoil" else multicoil_dir
    mask_func = create_mask("random", center_fractions=[0.08], accelerations=[4])
    transform = IconetDataTransform(Acquisition(scale, mask_func), hr_crop=(32, 32), use_seed=True)
    dataset = SliceDataset(root, challenge, transform=transform, use_dataset_cache=False)
    assert len(dataset) > 0
    for i in range(len(dataset)):
        sample = dataset[i]
        assert isinstance(sample, IconetSample)
        coils = 1 if challenge == "singlecoil" else 4
        assert sample.hr_images.shape == (coils, 32, 32) and sample.hr_images.dtype == torch.complex64
        assert sample.mask.shape == (1, 32 // scale, 32 // scale)
        deg = Acquisition(scale)(sample.hr_images[None], sample.mask[None])
        hr = deg.hr_target[0, 0]
        # The file's own reconstruction_esc / reconstruction_rss, float32 tolerance.
        assert torch.allclose(hr, sample.target, rtol=1e-4, atol=1e-5 * float(sample.target.max()))
        assert sample.max_value == pytest.approx(
            max(float(dataset[j].target.max()) for j in range(len(dataset)) if dataset[j].fname == sample.fname),
            rel=1e-5,
        )


def test_validation_masks_are_seeded_per_slice(singlecoil_dir):
    mask_func = create_mask("random", center_fractions=[0.08], accelerations=[4])
    transform = IconetDataTransform(Acquisition(2, mask_func), hr_crop=(32, 32), use_seed=True)
    dataset = SliceDataset(singlecoil_dir, "singlecoil", transform=transform, use_dataset_cache=False)
    a = [dataset[i].mask for i in range(len(dataset))]
    b = [dataset[i].mask for i in range(len(dataset))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    s = dataset[0]
    expected, _ = create_mask("random", center_fractions=[0.08], accelerations=[4])((16, 16), seed=mask_seed(s.fname, s.slice_num))
    assert torch.equal(s.mask[0], expected)
    assert len({tuple(m.flatten().tolist()) for m in a}) > 1  # differs across slices


def test_training_patches_and_random_masks(singlecoil_dir):
    mask_func = create_mask("random", center_fractions=[0.08], accelerations=[4], seed=0)
    transform = IconetDataTransform(Acquisition(2, mask_func), hr_crop=(32, 32), use_seed=False, patch_size=(16, 12), seed=0)
    dataset = SliceDataset(singlecoil_dir, "singlecoil", transform=transform, use_dataset_cache=False)
    boxes = [dataset[0].patch.tolist() for _ in range(8)]
    s1 = dataset[0]
    # The sample keeps the whole slice and its whole-slice mask (the patch is cut after the
    # acquisition, models/patches.py); the patch is a box of the HR grid aligned to the scale.
    assert s1.hr_images.shape == (1, 32, 32) and s1.mask.shape == (1, 16, 16)
    full = IconetDataTransform(Acquisition(2), hr_crop=(32, 32))
    ref = SliceDataset(singlecoil_dir, "singlecoil", transform=full, use_dataset_cache=False)[0]
    assert torch.equal(ref.hr_images, s1.hr_images) and ref.patch.tolist() == [0, 0, 32, 32]
    for r0, c0, ph, pw in boxes:
        assert (ph, pw) == (16, 12) and r0 % 2 == 0 and c0 % 2 == 0 and r0 + ph <= 32 and c0 + pw <= 32
    assert len({tuple(b[:2]) for b in boxes}) > 1  # random positions


def test_kspace_errors_name_file_and_slice():
    good = np.ones((4, 4), dtype=np.complex64)
    with pytest.raises(TypeError, match=r"f\.h5, slice 2.*complex"):
        check_kspace(np.ones((4, 4), dtype=np.float32), "f.h5", 2)
    with pytest.raises(ValueError, match=r"f\.h5.*shape \(2, 2, 4, 4\)"):
        check_kspace(np.ones((2, 2, 4, 4), dtype=np.complex64), "f.h5", 0)
    bad = good.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"f\.h5, slice 0.*NaN"):
        check_kspace(bad, "f.h5", 0)
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match=r"Inf"):
        check_kspace(bad, "f.h5", 0)
    with pytest.raises(ValueError, match=r"all zeros"):
        check_kspace(np.zeros((4, 4), np.complex64), "f.h5", 0)
    assert check_kspace(good, "f.h5", 0).shape == (1, 4, 4)


def test_crop_and_scale_errors():
    with pytest.raises(ValueError, match="not divisible by the scale 4"):
        IconetDataTransform(Acquisition(4), hr_crop=(30, 32))
    with pytest.raises(ValueError, match="unsupported scale 3"):
        IconetDataTransform(Acquisition(3), hr_crop=(30, 30))
    transform = IconetDataTransform(Acquisition(2), hr_crop=(64, 64))
    with pytest.raises(ValueError, match=r"vol\.h5, slice 1: hr_crop 64x64 is larger than the image 32x40"):
        transform(np.ones((32, 40), np.complex64), None, None, {}, "vol.h5", 1)
