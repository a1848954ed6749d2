"""Issue 21, classes 2 (values), 4 (errors that come late) and 5 (silent mistakes), at start-up.

* k-space that is finite but so large that float32 computations overflow
  (training then ended with "PSNR nan" and exit code 0) is refused when the
  dataset is built, naming the file, the slice and the value;
* a volume narrower than ``hr_crop`` is refused at ``setup`` for every split
  (it failed only at validation, after a training epoch), unless ``pad_if_smaller``;
* an absurd ``hr_crop`` / ``patch_size`` is refused at construction, before
  masks are drawn on it (it spent minutes allocating gigabytes);
* the same volume in train and val is a warning at ``setup`` naming both.
"""

import logging
import shutil

import h5py
import numpy as np
import pytest

from helpers.runs import deadline
from iconet_fastmri.data.dataset import IconetSliceDataset
from iconet_fastmri.data.validation import FastMRIFileError, scan_kspace_values
from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.pl_modules.data_module import IconetDataModule


def _root(tmp_path, val_recon=(32, 32)):
    root = tmp_path / "data"
    write_fastmri_dataset(root / "singlecoil_train", "singlecoil", 2, 2, (32, 32), seed=1)
    write_fastmri_dataset(root / "singlecoil_val", "singlecoil", 1, 2, val_recon, seed=2, first_index=10)
    return root


def _dm(root, **kw):
    args = dict(data_path=str(root), scale=2, hr_crop=(32, 32), batch_size=2, num_workers=0,
                use_dataset_cache=False)
    args.update(kw)
    return IconetDataModule(**args)


def _scale_kspace(path, factor):
    with h5py.File(path, "r+") as f:
        f["kspace"][...] = f["kspace"][...] * factor


# ------------------------------------------------------------------ class 2: values
def test_finite_but_huge_kspace_is_refused_at_build(tmp_path):
    """k-space x 1e22 is finite in complex64 but its squares overflow float32: NaN PSNR, exit 0."""
    folder = tmp_path / "vols"
    paths = write_fastmri_dataset(folder, "singlecoil", 2, 2, (32, 32), seed=4)
    _scale_kspace(paths[1], 1e22)
    with h5py.File(paths[1], "r") as f:
        assert np.isfinite(f["kspace"][...]).all()
    with pytest.raises(FastMRIFileError, match=rf"{paths[1].name}: dataset 'kspace', slice 0: .*\de\+\d\d.*float32"):
        IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False, progress=False)
    with pytest.raises(FastMRIFileError, match=r"slice 0: .*max \|k\|"):
        scan_kspace_values(paths[1])


def test_a_cache_from_before_the_bound_does_not_let_huge_kspace_through(tmp_path):
    """A per-user cache written by an older version said "values checked" without the overflow bound."""
    import json
    import os

    folder, cache = tmp_path / "vols", tmp_path / "cache"
    paths = write_fastmri_dataset(folder, "singlecoil", 1, 2, (32, 32), seed=4)
    IconetSliceDataset(folder, "singlecoil", cache_dir=cache, progress=False)
    _scale_kspace(paths[0], 1e22)
    cache_file = next(cache.glob("dataset_*.json"))
    data = json.loads(cache_file.read_text())
    for entry in data["files"].values():  # as the older version wrote it, for the file as it is now
        entry.pop("values_scan", None)
        entry["mtime_ns"] = os.stat(paths[0]).st_mtime_ns
        entry["size"] = os.stat(paths[0]).st_size
    cache_file.write_text(json.dumps(data))
    with pytest.raises(FastMRIFileError, match=r"slice 0: .*float32"):
        IconetSliceDataset(folder, "singlecoil", cache_dir=cache, progress=False)


def test_large_but_safe_kspace_is_accepted(tmp_path):
    """A guard: scanner units (k-space x 1e6, |k| ~ 1e3) stay far below the bound."""
    folder = tmp_path / "vols"
    paths = write_fastmri_dataset(folder, "singlecoil", 1, 2, (32, 32), seed=4)
    _scale_kspace(paths[0], 1e6)
    scan_kspace_values(paths[0])


# ------------------------------------------------------------------ class 4: errors that come late
def test_val_volume_narrower_than_hr_crop_is_refused_at_setup(tmp_path):
    """The val file's image is 64 x 28 (its k-space shape), hr_crop 32 x 32: known before the first epoch."""
    root = _root(tmp_path, val_recon=(32, 24))
    dm = _dm(root)
    with pytest.raises(ValueError, match=r"file_demo_010\.h5.*64x28.*hr_crop 32x32.*pad_if_smaller"):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"file_demo_010\.h5"):
        _dm(root).setup("validate")
    _dm(root, pad_if_smaller=True).setup("fit")  # padding makes them fit


def test_train_volume_narrower_than_hr_crop_is_refused_at_setup(tmp_path):
    root = _root(tmp_path)
    write_fastmri_dataset(root / "singlecoil_train", "singlecoil", 1, 2, (32, 24), seed=5, first_index=7)
    with pytest.raises(ValueError, match=r"train.*file_demo_007\.h5.*64x28"):
        _dm(root).setup("fit")


def test_absurd_hr_crop_is_refused_before_masks_are_drawn(tmp_path):
    """--data.hr_crop [100000,100000] spent 130 s allocating 10 GB of masks before failing at the first batch."""
    with deadline(20), pytest.raises(ValueError, match=r"hr_crop 100000x100000 .*10000000000 pixels"):
        _dm(tmp_path, hr_crop=(100000, 100000))


def test_absurd_patch_size_is_refused_before_masks_are_drawn(tmp_path):
    with deadline(20), pytest.raises(ValueError, match=r"patch_size 100000x100000"):
        _dm(tmp_path, hr_crop=(32, 32), patch_size=(100000, 100000))


# ------------------------------------------------------------------ class 5: silent mistakes
def test_same_volume_in_train_and_val_is_a_warning(tmp_path, caplog):
    """A volume under the same name, and a renamed copy of another, in both splits."""
    root = _root(tmp_path)
    train = sorted((root / "singlecoil_train").glob("*.h5"))
    shutil.copy(train[0], root / "singlecoil_val" / train[0].name)
    shutil.copy(train[1], root / "singlecoil_val" / "renamed_copy.h5")
    with caplog.at_level(logging.WARNING, logger="iconet_fastmri"):
        _dm(root).setup("fit")
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "train and val" in text
    assert train[0].name in text
    assert "renamed_copy.h5" in text and train[1].name in text


def test_distinct_splits_give_no_overlap_warning(tmp_path, caplog):
    """A guard: separate volumes are not reported."""
    with caplog.at_level(logging.WARNING, logger="iconet_fastmri"):
        _dm(_root(tmp_path)).setup("fit")
    assert not [r for r in caplog.records if "train and val" in r.getMessage()]


def test_the_per_slice_check_refuses_huge_kspace_too():
    """Paths that skip the start-up scan (inference, evaluation, check_values=False) meet the same bound per slice."""
    import numpy as np

    from iconet_fastmri.data.transforms import check_kspace

    kspace = (np.ones((2, 8, 8)) + 1j).astype(np.complex64)
    check_kspace(kspace * 1e6, "ok.h5", 0)
    with pytest.raises(ValueError, match=r"huge\.h5, slice 3.*exceeds"):
        check_kspace(kspace * np.float32(1e22), "huge.h5", 3)
