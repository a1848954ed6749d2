"""Issue 21, class 3: declared sizes that drive allocations or hangs.

A file, a mask or a checkpoint may *declare* a size (slices, header bytes,
mask shape, model width) far beyond what it holds. Each is refused before
anything of that size is read, allocated or looped over, by an error that
names the file and the number. Every test runs under a deadline, so a
regression fails instead of hanging; those that could allocate check the
peak of Python/numpy allocations (``tracemalloc``).
"""

import contextlib
import tracemalloc

import h5py
import numpy as np
import pytest
import torch

from iconet_fastmri.data.dataset import IconetSliceDataset
from iconet_fastmri.data.validation import FastMRIFileError, validate_fastmri_file
from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.models import ICONet, model_from_spec, model_spec
from iconet_fastmri.physics.masks import create_mask

from helpers.runs import deadline

ICONET = "iconet_fastmri.models.ICONet"


@contextlib.contextmanager
def peak_allocation(limit_bytes: int):
    """Fail if numpy/Python allocate more than ``limit_bytes`` at once inside the block."""
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < limit_bytes, f"allocated {peak} bytes at peak (limit {limit_bytes})"


@pytest.fixture(scope="module")
def header_bytes(tmp_path_factory):
    """A valid ISMRMRD header (from a file of our generator)."""
    folder = tmp_path_factory.mktemp("header_src")
    path = write_fastmri_dataset(folder, "singlecoil", 1, 1, (32, 32), seed=3)[0]
    with h5py.File(path, "r") as f:
        return bytes(f["ismrmrd_header"][()])


def _declaring_file(path, shape, header, fill=1 + 1j):
    """A tiny fastMRI-format file whose k-space *declares* ``shape``; no chunk is written (fill values)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=shape, dtype=np.complex64, chunks=(1,) + tuple(shape[1:]),
                         fillvalue=np.complex64(fill))
        f.create_dataset("ismrmrd_header", data=np.bytes_(header))
    return path


# ------------------------------------------------------------------ files
def test_file_declaring_1e8_slices_is_refused_at_once(tmp_path, header_bytes):
    """A file of a few KB declaring 10^8 slices: start-up took hours (it scanned every slice)."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = _declaring_file(folder / "many_slices.h5", (10**8, 8, 8), header_bytes)
    assert path.stat().st_size < 200_000
    with deadline(30), pytest.raises(FastMRIFileError, match=r"many_slices\.h5: .*100000000 slices"):
        IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False, progress=False)
    with deadline(10), pytest.raises(FastMRIFileError, match=r"many_slices\.h5: .*100000000 slices"):
        validate_fastmri_file(path)


def test_file_declaring_far_more_data_than_it_holds_is_refused(tmp_path, header_bytes):
    """A plausible slice count, but 1 GiB of k-space declared in a file of a few KB (the rest is fill values)."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = _declaring_file(folder / "hollow.h5", (2048, 256, 256), header_bytes)
    with deadline(30), pytest.raises(FastMRIFileError, match=r"hollow\.h5: .*declares .*1073741824 bytes"):
        IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False, progress=False)


def test_header_declaring_a_huge_size_is_not_read(tmp_path, header_bytes):
    """An 'ismrmrd_header' dataset declaring 64 MiB (the issue's was 8 GiB) was read into memory whole."""
    path = _declaring_file(tmp_path / "big_header.h5", (2, 8, 8), header_bytes)
    with h5py.File(path, "r+") as f:
        del f["ismrmrd_header"]
        f.create_dataset("ismrmrd_header", shape=(2**26,), dtype=np.uint8, chunks=(2**16,))
    with deadline(20), peak_allocation(16 * 2**20), pytest.raises(
        FastMRIFileError, match=r"big_header\.h5: dataset 'ismrmrd_header' declares 67108864 bytes"
    ):
        validate_fastmri_file(path)


# ------------------------------------------------------------------ masks
def test_mask_h5_declaring_a_huge_shape_is_not_read(tmp_path):
    """A mask .h5 declaring 8192 x 8192 (the issue's was 100000 x 100000) was read whole before any check."""
    path = tmp_path / "huge_mask.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("mask", shape=(8192, 8192), dtype=np.uint8, chunks=(256, 256), fillvalue=1)
    with deadline(20), peak_allocation(16 * 2**20), pytest.raises(
        ValueError, match=r"huge_mask\.h5.*\(8192, 8192\).*67108864"
    ):
        create_mask("file", path=str(path))


def test_mask_npy_declaring_a_huge_shape_is_not_read(tmp_path):
    """A 100-byte .npy whose header declares 100000 x 100000 float32 (40 GB)."""
    path = tmp_path / "huge_mask.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
        f.write(b"\x00" * 64)
    with deadline(20), peak_allocation(16 * 2**20), pytest.raises(
        ValueError, match=r"huge_mask\.npy.*\(100000, 100000\).*10000000000"
    ):
        create_mask("file", path=str(path))


def test_small_mask_files_still_load(tmp_path):
    """The bound leaves real masks alone (a guard, passes before and after)."""
    npy = tmp_path / "ok.npy"
    np.save(npy, (np.arange(64) % 4 == 0).astype(np.float32))
    mask, _ = create_mask("file", path=str(npy))((16, 64))
    assert mask.shape == (16, 64)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_declaring_width_40000_is_refused_before_building():
    """A stranger's checkpoint spec with width 40000: the build tried to allocate gigabytes."""
    spec = {"class_path": ICONET, "init_args": {"scale": 2, "width": 40000}}
    with deadline(20), pytest.raises(ValueError, match=r"ICONet.*width=40000.* parameters, above the limit"):
        model_from_spec(spec)


def test_run_inference_refuses_a_checkpoint_declaring_width_40000(tmp_path):
    """The same spec in a checkpoint file (a few hundred bytes, no weights): refused naming the file."""
    from iconet_fastmri.inference import load_method

    path = tmp_path / "stranger.ckpt"
    torch.save({"hyper_parameters": {"model": {"class_path": ICONET, "init_args": {"scale": 2, "width": 40000}}},
                "state_dict": {}}, path)
    with deadline(20), pytest.raises(ValueError, match=r"stranger\.ckpt: .*width=40000.* parameters"):
        load_method(checkpoint=path)


def test_check_model_spec_counts_without_allocating():
    """The function the CLI calls for checkpoints: the parameter count, from a build on the meta device."""
    from iconet_fastmri.models import check_model_spec

    model = ICONet(scale=2, width=8, blocks_per_stage=1)
    expected = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert check_model_spec(model_spec(model)) == expected
    spec = {"class_path": ICONET, "init_args": {"scale": 2, "width": 40000}}
    with deadline(20), pytest.raises(ValueError, match=r"checkpoint x\.ckpt: .*width=40000"):
        check_model_spec(spec, where="checkpoint x.ckpt")


def test_checkpoint_declaring_a_million_blocks_is_refused_quickly():
    """Many small modules instead of wide ones: stopped by the module/parameter bound while counting."""
    spec = {"class_path": ICONET, "init_args": {"scale": 2, "width": 8, "blocks_per_stage": 10**6}}
    with deadline(30), pytest.raises(ValueError, match=r"ICONet.*blocks_per_stage=1000000"):
        model_from_spec(spec)


def test_ordinary_models_still_build_from_specs():
    """A guard: the bound leaves real models (and their weights' device) alone."""
    model = model_from_spec(model_spec(ICONet(scale=2, width=8, blocks_per_stage=1)))
    assert all(p.device == torch.device("cpu") for p in model.parameters())
