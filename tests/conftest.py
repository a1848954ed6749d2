"""Shared fixtures: tiny fastMRI-format datasets written by our generator."""

import os
from pathlib import Path

import pytest

from iconet_fastmri.demo import write_fastmri_dataset

# Keep the per-user dataset cache of the tests out of the real home folder.
os.environ.setdefault("XDG_CACHE_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "iconet_test_cache"))


@pytest.fixture(scope="session")
def singlecoil_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("singlecoil_val")
    write_fastmri_dataset(out, "singlecoil", num_volumes=2, slices=3, recon_size=(32, 32), seed=1)
    return out


@pytest.fixture(scope="session")
def multicoil_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multicoil_val")
    write_fastmri_dataset(out, "multicoil", num_volumes=2, slices=2, recon_size=(32, 32), num_coils=4, seed=2)
    return out
