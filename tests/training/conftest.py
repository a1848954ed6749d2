"""Fixtures shared by the patch-training tests."""

from __future__ import annotations

import pytest

from iconet_fastmri.demo import write_fastmri_dataset


@pytest.fixture(scope="module")
def patch_data(tmp_path_factory):
    """A small single-coil fastMRI-format set, 64x64 images: 8 training and 2 validation volumes of 4 slices."""
    root = tmp_path_factory.mktemp("patch")
    write_fastmri_dataset(root / "singlecoil_train", "singlecoil", num_volumes=8, slices=4, recon_size=(64, 64), seed=3)
    write_fastmri_dataset(root / "singlecoil_val", "singlecoil", num_volumes=2, slices=4, recon_size=(64, 64), seed=4,
                          first_index=50)
    return root
