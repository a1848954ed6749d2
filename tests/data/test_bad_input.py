"""Bad input: every case raises a clear error naming the file, key or value.

One test per case, listed here so the count is visible.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from iconet_fastmri.data.dataset import IconetSliceDataset
from iconet_fastmri.data.transforms import IconetDataTransform
from iconet_fastmri.data.validation import FastMRIFileError, validate_fastmri_file
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.masks import create_mask

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def one_file(tmp_path, singlecoil_dir):
    src = sorted(singlecoil_dir.glob("*.h5"))[0]
    dst = tmp_path / "vol.h5"
    shutil.copy(src, dst)
    return dst


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.h5"
    p.write_bytes(b"")
    with pytest.raises(FastMRIFileError, match=r"empty\.h5: file is empty"):
        validate_fastmri_file(p)


def test_not_hdf5(tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("not an hdf5 file\n" * 10)
    with pytest.raises(FastMRIFileError, match=r"text\.h5: not an HDF5 file"):
        validate_fastmri_file(p)


def test_truncated_file(one_file):
    data = one_file.read_bytes()
    one_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastMRIFileError, match=r"vol\.h5: .*(truncated|corrupt)"):
        validate_fastmri_file(one_file)


def test_missing_kspace(one_file):
    _edit(one_file, lambda f: f.__delitem__("kspace"))
    with pytest.raises(FastMRIFileError, match=r"vol\.h5: missing dataset 'kspace'"):
        validate_fastmri_file(one_file)


def test_missing_header(one_file):
    _edit(one_file, lambda f: f.__delitem__("ismrmrd_header"))
    with pytest.raises(FastMRIFileError, match=r"vol\.h5: missing dataset 'ismrmrd_header'"):
        validate_fastmri_file(one_file)


def test_malformed_header_xml(one_file):
    def fn(f):
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = b"<ismrmrdHeader><encoding>"
    _edit(one_file, fn)
    with pytest.raises(FastMRIFileError, match=r"vol\.h5: dataset 'ismrmrd_header' is not valid XML"):
        validate_fastmri_file(one_file)


def test_header_missing_field(one_file):
    def fn(f):
        raw = f["ismrmrd_header"][()].decode()
        start, end = raw.index("<reconSpace>"), raw.index("</reconSpace>") + len("</reconSpace>")
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = (raw[:start] + raw[end:]).encode()
    _edit(one_file, fn)
    with pytest.raises(FastMRIFileError, match=r"lacks the field encoding/reconSpace/matrixSize/x"):
        validate_fastmri_file(one_file)


def test_kspace_wrong_ndim(one_file):
    def fn(f):
        k = f["kspace"][()]
        del f["kspace"]
        f["kspace"] = k[:, None, None]
    _edit(one_file, fn)
    with pytest.raises(FastMRIFileError, match=r"vol\.h5: dataset 'kspace' has shape \(\d+, 1, 1, \d+, \d+\)"):
        validate_fastmri_file(one_file)


def test_kspace_singlecoil_file_as_multicoil(one_file):
    with pytest.raises(FastMRIFileError, match=r"expected 4 dimensions"):
        validate_fastmri_file(one_file, "multicoil")


def test_kspace_not_complex(one_file):
    def fn(f):
        k = f["kspace"][()]
        del f["kspace"]
        f["kspace"] = np.abs(k).astype(np.float32)
    _edit(one_file, fn)
    with pytest.raises(FastMRIFileError, match=r"'kspace' must be complex, got dtype float32"):
        validate_fastmri_file(one_file)


def test_absurd_declared_shape_refused_before_reading(tmp_path):
    p = tmp_path / "huge.h5"
    with h5py.File(p, "w") as f:
        # Declared but never written: reading it would allocate ~1 TB.
        f.create_dataset("kspace", shape=(2, 64, 200000, 20000), dtype=np.complex64, chunks=(1, 1, 64, 64))
    with pytest.raises(FastMRIFileError, match=r"huge\.h5: .*\(2, 64, 200000, 20000\).*exceed"):
        validate_fastmri_file(p)


@pytest.mark.parametrize("value,kind", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nonfinite_kspace(value, kind):
    k = np.ones((1, 8, 8), np.complex64)
    k[0, 2, 3] = value
    with pytest.raises(ValueError, match=rf"vol\.h5, slice 4, dataset 'kspace': .*{kind}"):
        IconetDataTransform(Acquisition(2), hr_crop=(8, 8))(k[0], None, None, {}, "vol.h5", 4)


def test_all_zero_kspace():
    with pytest.raises(ValueError, match=r"vol\.h5, slice 0.*all zeros"):
        IconetDataTransform(Acquisition(2), hr_crop=(8, 8))(np.zeros((8, 8), np.complex64), None, None, {}, "vol.h5", 0)


def test_crop_larger_than_image():
    with pytest.raises(ValueError, match=r"hr_crop 16x16 is larger than the image 8x8"):
        IconetDataTransform(Acquisition(2), hr_crop=(16, 16))(np.ones((8, 8), np.complex64), None, None, {}, "v.h5", 0)


def test_odd_grid_for_scale_2():
    with pytest.raises(ValueError, match=r"31x32 is not divisible by the scale 2"):
        IconetDataTransform(Acquisition(2), hr_crop=(31, 32))


def test_grid_not_divisible_by_4():
    with pytest.raises(ValueError, match=r"not divisible by the scale 4"):
        Acquisition(4)(torch.ones(1, 1, 18, 16, dtype=torch.complex64))


@pytest.mark.parametrize("scale", [3, 1, 0, 16])
def test_unsupported_scale(scale):
    with pytest.raises(ValueError, match=rf"unsupported scale {scale}"):
        Acquisition(scale)


def test_unknown_mask_name():
    with pytest.raises(ValueError, match=r"unknown mask 'cartesian_xyz'; registered masks: .*poisson"):
        create_mask("cartesian_xyz")


def test_file_mask_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npy"):
        create_mask("file", path=tmp_path / "nope.npy")


def test_file_mask_wrong_shape(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"m\.npy' has shape \(4, 6\) but the LR grid is \(8, 8\)"):
        create_mask("file", path=tmp_path / "m.npy")((8, 8))


@pytest.mark.parametrize("accel", [1, 0.5, -2])
def test_acceleration_not_above_one(accel):
    with pytest.raises(ValueError, match=rf"acceleration {float(accel)} is not > 1"):
        create_mask("random", center_fractions=[0.08], accelerations=[accel])


def test_dataset_names_bad_file_and_can_skip_it(tmp_path, singlecoil_dir, caplog):
    for src in sorted(singlecoil_dir.glob("*.h5")):
        shutil.copy(src, tmp_path / src.name)
    (tmp_path / "zzz_broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (tmp_path / "notes.txt").write_text("stray file that fastmri's SliceDataset would choke on")
    with pytest.raises(FastMRIFileError, match=r"zzz_broken\.h5"):
        IconetSliceDataset(tmp_path, "singlecoil", use_dataset_cache=False)
    with caplog.at_level("WARNING"):
        ds = IconetSliceDataset(tmp_path, "singlecoil", use_dataset_cache=False, skip_bad_files=True)
    assert [p.name for p in ds.skipped_files] == ["zzz_broken.h5"]
    assert "zzz_broken.h5" in caplog.text
    assert all("zzz" not in str(s.fname) for s in ds.raw_samples)


@pytest.mark.slow
def test_unknown_config_key_is_rejected(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  widht: 16\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_iconet_fastmri.py"), "fit", "--config", str(cfg)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "widht" in proc.stderr


def test_file_without_reconstruction_is_not_an_error(one_file):
    _edit(one_file, lambda f: f.__delitem__("reconstruction_esc"))
    assert validate_fastmri_file(one_file)[0] >= 1
    ds = IconetSliceDataset(one_file.parent, "singlecoil", use_dataset_cache=False,
                            transform=IconetDataTransform(Acquisition(2), hr_crop=(32, 32)))
    sample = ds[0]
    assert sample.target.numel() == 0 and sample.hr_images.shape == (1, 32, 32)


def test_evaluate_prediction_shape_mismatch(tmp_path, singlecoil_dir):
    from iconet_fastmri.evaluation import PredictionError, evaluate_folders

    pred = tmp_path / "pred"
    pred.mkdir()
    for src in sorted(singlecoil_dir.glob("*.h5")):
        with h5py.File(pred / src.name, "w") as f:
            f["reconstruction"] = np.zeros((3, 32, 30), np.float32)
    with pytest.raises(PredictionError, match=r"\(3, 32, 30\) does not match the target shape \(3, 32, 32\)"):
        evaluate_folders(singlecoil_dir, [pred], hr_crop=(32, 32))


def test_absurd_header_matrix_refused(one_file):
    def fn(f):
        raw = f["ismrmrd_header"][()].decode()
        start = raw.index("<encodedSpace>")
        x0 = raw.index("<x>", start) + 3
        x1 = raw.index("</x>", x0)
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = (raw[:x0] + "90000000" + raw[x1:]).encode()
    _edit(one_file, fn)
    with pytest.raises(FastMRIFileError, match=r"vol\.h5: 'ismrmrd_header' declares an encoded matrix of 90000000x"):
        validate_fastmri_file(one_file)
