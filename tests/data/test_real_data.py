"""fastMRI data as it really comes (issue 10): every run is right or refused at start-up."""

import logging
import os
import warnings

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from iconet_fastmri.data.batching import collate_samples
from iconet_fastmri.data.dataset import IconetSliceDataset
from iconet_fastmri.data.splits import volume_part
from iconet_fastmri.data.transforms import IconetDataTransform
from iconet_fastmri.data.validation import FastMRIFileError
from iconet_fastmri.demo import make_demo_splits, write_fastmri_dataset
from iconet_fastmri.evaluation import evaluate_folders
from iconet_fastmri.inference import run_inference
from iconet_fastmri.models import ICONet
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.masks import MaskConfig, create_mask
from iconet_fastmri.pl_modules import IconetDataModule, IconetModule


def _dm(root, **kw):
    args = dict(data_path=str(root), challenge="multicoil", scale=2, hr_crop=(32, 32), batch_size=4,
                num_workers=0, use_dataset_cache=False)
    args.update(kw)
    return IconetDataModule(**args)


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                use_distributed_sampler=False, default_root_dir=str(tmp_path))
    args.update(kw)
    return pl.Trainer(**args)


def _tiny():
    return IconetModule(ICONet(scale=2, width=4, blocks_per_stage=1), lr=1e-3)


@pytest.fixture(scope="module")
def coils_root(tmp_path_factory):
    """Brain-like multicoil split with 4, 6, 16 and 20 coils (and one knee-like 15-coil volume)."""
    root = tmp_path_factory.mktemp("coils")
    for split, first in (("train", 0), ("val", 10)):
        for i, coils in enumerate((4, 6, 16, 20)):
            write_fastmri_dataset(root / f"multicoil_{split}", "multicoil", 1, 2, (32, 32), num_coils=coils,
                                  seed=i, first_index=first + i, anatomy="brain")
    return root


# ------------------------------------------------------------------ 1, 2: batching
@pytest.mark.slow
def test_varying_coil_counts_batch_and_train(coils_root, tmp_path):
    ds = IconetSliceDataset(coils_root / "multicoil_train", "multicoil", use_dataset_cache=False,
                            transform=IconetDataTransform(Acquisition(2), (32, 32)))
    samples = [ds[i] for i in range(len(ds))]
    assert sorted({s.hr_images.shape[0] for s in samples}) == [4, 6, 16, 20]
    batch = collate_samples(samples)
    assert batch.hr_images.shape == (8, 20, 32, 32)
    # Zero coils change nothing: the batched degradation equals each slice degraded alone.
    mask = torch.ones(8, 1, 16, 16)
    batched = Acquisition(2)(batch.hr_images, mask)
    for i, s in enumerate(samples):
        alone = Acquisition(2)(s.hr_images[None], mask[i : i + 1])
        for name in ("hr_target", "lr_clean", "lr_input"):
            assert torch.allclose(getattr(batched, name)[i], getattr(alone, name)[0], rtol=1e-5, atol=1e-9)
    _trainer(tmp_path).fit(_tiny(), datamodule=_dm(coils_root, batch_size=8))


def test_mixed_targets_and_padding_in_one_batch(tmp_path):
    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", 1, 2, (32, 32), seed=1)
    write_fastmri_dataset(folder, "singlecoil", 1, 2, (32, 32), seed=2, first_index=1)
    write_fastmri_dataset(folder, "singlecoil", 1, 2, (32, 24), kspace_width=24, seed=3, first_index=2)
    with h5py.File(folder / "file_demo_001.h5", "r+") as f:
        del f["reconstruction_esc"]
    ds = IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False,
                            transform=IconetDataTransform(Acquisition(2), (32, 32), pad_if_smaller=True))
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch.hr_images.shape == (6, 1, 32, 32) and batch.target.numel() == 0
    with pytest.raises(ValueError, match=r"file_demo_000\.h5 slice 0: \(32, 32\).*\(16, 16\)"):
        small = IconetDataTransform(Acquisition(2), (16, 16))(*_raw(folder / "file_demo_000.h5"), "file_demo_000.h5", 0)
        collate_samples([ds[0], small])


def _raw(path):
    with h5py.File(path) as f:
        return f["kspace"][0], None, None, dict(f.attrs)


# ------------------------------------------------------------------ 3: layout
def test_knee_and_brain_side_by_side_is_an_error_until_chosen(tmp_path):
    for anatomy in ("knee", "brain"):
        for split in ("train", "val"):
            write_fastmri_dataset(tmp_path / f"{anatomy}_multicoil_{split}", "multicoil", 1, 1, (32, 32),
                                  num_coils=2, anatomy=anatomy)
    with pytest.raises(ValueError, match="brain_multicoil_train, knee_multicoil_train; choose with --data.anatomy"):
        _dm(tmp_path).split_path("train")
    assert _dm(tmp_path, anatomy="knee").split_path("val").name == "knee_multicoil_val"


# ------------------------------------------------------------------ 4: one HR-target rule
def test_narrow_volumes_evaluate_with_the_training_rule(tmp_path):
    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", 2, 2, (32, 24), kspace_width=24, seed=5)
    out = run_inference(folder, tmp_path / "bicubic", baseline="zero_filled_bicubic", scale=2, hr_crop=(32, 32),
                        pad_if_smaller=True, progress=False)
    with h5py.File(out[0]) as f:
        assert bool(f.attrs["pad_if_smaller"]) and f["reconstruction"].shape == (2, 32, 32)
    rows = evaluate_folders(folder, [tmp_path / "bicubic"])
    assert len(rows) == 2 and all(np.isfinite(r["psnr"]) for r in rows)


# ------------------------------------------------------------------ 5: values at build time
@pytest.mark.parametrize("value", [np.nan, np.inf, 0.0])
def test_bad_values_are_found_when_the_dataset_is_built(tmp_path, value, caplog):
    folder = tmp_path / "singlecoil_train"
    write_fastmri_dataset(folder, "singlecoil", 2, 3, (32, 32), seed=7)
    with h5py.File(folder / "file_demo_001.h5", "r+") as f:
        k = f["kspace"][()]
        if value == 0.0:
            k[2] = 0
        else:
            k[2, 3, 4] = value
        f["kspace"][...] = k
    with pytest.raises(FastMRIFileError, match=r"file_demo_001\.h5: dataset 'kspace', slice 2"):
        IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False)
    with caplog.at_level(logging.WARNING):
        ds = IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False, skip_bad_files=True)
    assert [p.name for p in ds.skipped_files] == ["file_demo_001.h5"] and len(ds) == 3
    assert "file_demo_001.h5" in caplog.text


# ------------------------------------------------------------------ 6: declared shapes
@pytest.mark.parametrize("key,shape", [("reconstruction_esc", (2, 100000, 100000)), ("mask", (100000, 100000))])
def test_other_datasets_are_shape_checked_before_reading(tmp_path, key, shape):
    folder = tmp_path / "singlecoil_train"
    write_fastmri_dataset(folder, "singlecoil", 1, 2, (32, 32), seed=8)
    with h5py.File(folder / "file_demo_000.h5", "r+") as f:
        if key in f:
            del f[key]
        f.create_dataset(key, shape=shape, dtype="f4", chunks=(1,) * (len(shape) - 2) + (64, 64))
    with pytest.raises(FastMRIFileError, match=rf"'{key}' declares"):
        IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False)


# ------------------------------------------------------------------ 7: symlinks and caches
def test_dangling_and_looping_symlinks_are_named(tmp_path, caplog):
    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", 2, 1, (32, 32), seed=9)
    os.symlink(tmp_path / "gone.h5", folder / "dangling.h5")
    os.symlink(folder / "loop.h5", folder / "loop.h5")
    with pytest.raises(FastMRIFileError, match="dangling.h5: is a dangling or looping symbolic link"):
        IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False)
    with caplog.at_level(logging.WARNING):
        ds = IconetSliceDataset(folder, "singlecoil", use_dataset_cache=False, skip_bad_files=True)
    assert sorted(p.name for p in ds.skipped_files) == ["dangling.h5", "loop.h5"] and len(ds) == 2
    assert "skipped 2 bad file(s)" in caplog.text


def test_cache_never_changes_what_is_accepted(tmp_path):
    import json

    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", 2, 2, (32, 32), seed=10)
    cache = tmp_path / "cache"
    IconetSliceDataset(folder, "singlecoil", cache_dir=cache)
    (path,) = cache.glob("dataset_*.json")
    data = json.loads(path.read_text())
    key = sorted(data["files"])[0]
    data["files"][key]["num_slices"] = "two"  # wrong type: rebuilt, not a crash
    path.write_text(json.dumps(data))
    assert len(IconetSliceDataset(folder, "singlecoil", cache_dir=cache)) == 4
    data["files"][key]["num_slices"] = 9  # stale: rechecked, not an IndexError mid-loop
    path.write_text(json.dumps(data))
    assert len(IconetSliceDataset(folder, "singlecoil", cache_dir=cache)) == 4
    # A cached file is still checked against a lowered limit.
    with pytest.raises(FastMRIFileError, match="max_slice_elements"):
        IconetSliceDataset(folder, "singlecoil", cache_dir=cache, max_slice_elements=100)


# ------------------------------------------------------------------ 8: the demo and real data
def test_demo_never_writes_into_real_data(tmp_path):
    real = tmp_path / "fastmri"
    write_fastmri_dataset(real / "singlecoil_train", "singlecoil", 1, 1, (32, 32), prefix="file1000")
    before = sorted(p.name for p in (real / "singlecoil_train").iterdir())
    with pytest.raises(FileExistsError, match="holds files the demo did not write"):
        make_demo_splits(real, train_volumes=1, val_volumes=1, slices=1, recon_size=(32, 32))
    assert sorted(p.name for p in (real / "singlecoil_train").iterdir()) == before
    assert not (real / "singlecoil_val").exists()
    # Our own folder is rewritten when the settings change, and a stranger's file in it is never deleted.
    demo = tmp_path / "demo"
    make_demo_splits(demo, train_volumes=1, val_volumes=1, slices=1, recon_size=(32, 32))
    make_demo_splits(demo, train_volumes=1, val_volumes=1, slices=1, recon_size=(16, 16))
    (demo / "singlecoil_val" / "mine.h5").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="mine.h5"):
        make_demo_splits(demo, train_volumes=1, val_volumes=1, slices=2, recon_size=(16, 16))
    assert (demo / "singlecoil_val" / "mine.h5").read_bytes() == b"x"


# ------------------------------------------------------------------ 9: settings at start-up
def test_settings_are_checked_where_they_are_given(tmp_path):
    with pytest.raises(ValueError, match=r"hr_crop must be two positive sizes"):
        _dm(tmp_path, hr_crop=(0, 0))
    with pytest.raises(ValueError, match=r"hr_crop must be two positive sizes"):
        _dm(tmp_path, hr_crop=(-32, 32))
    np.save(tmp_path / "m.npy", np.ones((16, 12), np.float32))
    with pytest.raises(ValueError, match=r"m\.npy"):
        _dm(tmp_path, mask=MaskConfig(name="file", path=str(tmp_path / "m.npy")))
    with pytest.raises(ValueError, match=r"achieves R = .*nominal R = 100000.*cannot reach"):
        _dm(tmp_path, mask=MaskConfig(name="radial", accelerations=[100000]))
    with pytest.warns(UserWarning, match=r"achieves R = 3\.\d+.*nominal R = 4"):
        _dm(tmp_path, mask=MaskConfig(name="equispaced", accelerations=[4]))
    from iconet_fastmri.reports import VolumeMetricsFile

    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        VolumeMetricsFile(str(tmp_path / "no_such_folder" / "val.json"))


def test_name_valued_options_are_rejected_at_parse_time(tmp_path):
    from iconet_fastmri.cli import main

    base = ["fit", "--model.model", "ICONet", "--print_config"]
    with pytest.raises(SystemExit) as good:  # --print_config itself exits, with status 0
        main(base)
    assert not good.value.code
    for bad in ("--model.model.init_args.fusion=adaptve", "--data.challenge=multicoill",
                "--model.supervise=last", "--data.anatomy=kne"):
        with pytest.raises(SystemExit) as info:
            main(base + [bad])
        assert info.value.code, bad  # a parse error, before anything is built


# ------------------------------------------------------------------ 11, 12: honest selection, fastMRI seeding
def test_val_and_test_parts_are_disjoint_and_deterministic(tmp_path):
    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", 12, 1, (32, 32), seed=11)
    write_fastmri_dataset(tmp_path / "singlecoil_train", "singlecoil", 1, 1, (32, 32), seed=12, first_index=50)
    dm = _dm(tmp_path, challenge="singlecoil", test_fraction=0.5)
    val = set(dm._dataset("val").slices_per_volume())
    test = set(dm._dataset("test").slices_per_volume())
    names = {p.name for p in folder.glob("*.h5")}
    assert val and test and not val & test and val | test == names
    assert test == {n for n in names if volume_part(n, 0.5) == "test"}
    assert dm.state_dict()["test_fraction"] == 0.5
    with pytest.raises(ValueError, match="test_fraction must be in"):
        _dm(tmp_path, test_fraction=1.5)


def test_fastmri_volume_seeding_matches_fastmri(tmp_path):
    from fastmri.data.subsample import RandomMaskFunc

    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", 1, 3, (32, 32), seed=13)
    transform = IconetDataTransform(Acquisition(2, create_mask("random", accelerations=[4])), (32, 32),
                                    mask_seed_rule="volume")
    ds = IconetSliceDataset(folder, "singlecoil", transform=transform, use_dataset_cache=False)
    masks = [ds[i].mask[0] for i in range(3)]
    assert all(torch.equal(m, masks[0]) for m in masks)  # one mask per volume
    expected, _ = RandomMaskFunc([0.08], [4])((1, 16, 16, 2), seed=tuple(map(ord, "file_demo_000.h5")))
    assert torch.equal(masks[0][0], expected.reshape(-1).float())  # fastMRI's own mask for that seed
