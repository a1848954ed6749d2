"""Shards (litdata) hold exactly what the HDF5 path computes; bad or foreign shard sets are refused."""

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from iconet_fastmri.data import shard_writer, shards as shards_mod
from iconet_fastmri.data.shard_writer import prepare_shards
from iconet_fastmri.data.dataset import IconetSliceDataset
from iconet_fastmri.data.shards import (
    MANIFEST,
    ShardSetError,
    ShardSettings,
    ShardSliceDataset,
)
from iconet_fastmri.data.transforms import IconetDataTransform
from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.pl_modules.data_module import IconetDataModule
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.masks import MaskConfig

GRID = (32, 32)


def _transform(train=False):
    acq = Acquisition(2, MaskConfig())
    transform = IconetDataTransform(acq, GRID, use_seed=not train, patch_size=(16, 32) if train else None)
    transform.reseed(7)  # what the data module's sampler does per (seed, epoch, rank, worker)
    return transform


def _same(a, b):
    for field, x, y in zip(a._fields, a, b):
        if torch.is_tensor(x):
            assert x.dtype == y.dtype and torch.equal(x, y), field
        elif isinstance(x, float) and np.isnan(x):
            assert np.isnan(y), field
        else:
            assert x == y, field


@pytest.fixture(scope="module")
def multicoil_shards(multicoil_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mc") / "shards"
    prepare_shards({"val": multicoil_dir}, out, ShardSettings("multicoil", GRID), volumes_per_part=1,
                   chunk_bytes="64KB", progress=False)
    return out


@pytest.mark.parametrize("train", [False, True], ids=["val", "train"])
@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_a_slice_read_from_shards_is_the_hdf5_sample(challenge, train, singlecoil_dir, multicoil_dir, tmp_path):
    folder = singlecoil_dir if challenge == "singlecoil" else multicoil_dir
    assert h5py.File(next(folder.glob("*.h5")))["kspace"].shape[-1] > GRID[1]  # readout-oversampled: a real crop
    prepare_shards({"val": folder}, tmp_path / "s", ShardSettings(challenge, GRID), volumes_per_part=1,
                   chunk_bytes="64KB", progress=False)
    hdf5 = IconetSliceDataset(folder, challenge, transform=_transform(train), use_dataset_cache=False)
    shard = ShardSliceDataset(str(tmp_path / "s"), "val", ShardSettings(challenge, GRID), transform=_transform(train))
    assert [(str(s.fname), s.slice_ind) for s in shard.raw_samples] == [(Path(s.fname).name, s.slice_ind) for s in hdf5.raw_samples]
    assert shard.slices_per_volume() == hdf5.slices_per_volume()
    for i in range(len(hdf5)):
        a, b = hdf5[i], shard[i]
        assert a.hr_images.dtype == torch.complex64 and a.target.numel()
        _same(a, b)  # images, mask, target, max, patch: bit for bit


def test_float16_shards_keep_the_images_within_half_precision(multicoil_dir, multicoil_shards, tmp_path):
    prepare_shards({"val": multicoil_dir}, tmp_path / "h", ShardSettings("multicoil", GRID, precision="float16"),
                   progress=False)
    full = ShardSliceDataset(str(multicoil_shards), "val", ShardSettings("multicoil", GRID))
    half = ShardSliceDataset(str(tmp_path / "h"), "val", ShardSettings("multicoil", GRID))
    assert half.precision == "float16"
    for i in range(len(full)):
        a, b = full.read(i)[0], half.read(i)[0]
        err = float((a - b).abs().max() / a.abs().max())
        assert 0 < err < 2 ** -10  # half precision's rounding, relative to the slice peak
    chunk = lambda root: sum(p.stat().st_size for p in Path(root).rglob("chunk-*.bin"))  # noqa: E731
    assert chunk(tmp_path / "h") < 0.6 * chunk(multicoil_shards)  # images halved; the float32 target is kept


def test_prepare_resumes_after_a_kill_without_rewriting_finished_parts(multicoil_dir, multicoil_shards, tmp_path,
                                                                        monkeypatch):
    real, calls = shard_writer._write_part, []

    def killed_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            real(*args, **kwargs)  # the part is written but not yet in the manifest when the kill comes
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shard_writer, "_write_part", killed_on_second)
    out = tmp_path / "s"
    settings = ShardSettings("multicoil", GRID)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards({"val": multicoil_dir}, out, settings, volumes_per_part=1, chunk_bytes="64KB", progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert [p["name"] for p in manifest["splits"]["val"]["parts"]] == ["part-00000"]
    with pytest.raises(ShardSetError, match="unfinished"):
        ShardSliceDataset(str(out), "val", settings)
    first = {p: p.stat().st_mtime_ns for p in (out / "val" / "part-00000").iterdir()}
    monkeypatch.setattr(shard_writer, "_write_part", real)
    calls.clear()
    prepare_shards({"val": multicoil_dir}, out, settings, volumes_per_part=1, chunk_bytes="64KB", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "val" / "part-00000").iterdir()} == first
    resumed = ShardSliceDataset(str(out), "val", settings)
    whole = ShardSliceDataset(str(multicoil_shards), "val", settings)
    for i in range(len(whole)):
        assert torch.equal(resumed.read(i)[0], whole.read(i)[0])


def test_a_remote_shard_set_is_read_through_a_local_cache(multicoil_shards, tmp_path):
    remote = tmp_path / "bucket"
    shutil.copytree(multicoil_shards, remote)
    before = sorted(p.name for p in remote.rglob("*"))
    settings = ShardSettings("multicoil", GRID)
    dataset = ShardSliceDataset(f"local:{remote}", "val", settings, cache_dir=str(tmp_path / "cache"))
    local = ShardSliceDataset(str(multicoil_shards), "val", settings)
    for i in range(len(local)):
        assert torch.equal(dataset.read(i)[0], local.read(i)[0])
    assert list((tmp_path / "cache").rglob("chunk-*.bin"))  # chunks came through the cache
    # Batches through the cache: data-loader workers (each with its own reader) deliver the local set's batches.
    common = dict(challenge="multicoil", hr_crop=GRID, batch_size=2, num_workers=2, use_dataset_cache=False,
                  train_path=None)
    batches = []
    for root, cache in ((f"local:{remote}", str(tmp_path / "cache2")), (str(multicoil_shards), None)):
        dm = IconetDataModule(data_path=root, format="shards", shard_cache=cache, **common)
        dm.setup("validate")
        batches.append(list(dm.val_dataloader()))
    for a, b in zip(*batches):
        _same(a, b)
    assert sorted(p.name for p in remote.rglob("*")) == before  # nothing written at the "remote"
    with pytest.raises(ValueError, match="shard_cache"):
        IconetDataModule(data_path=f"local:{remote}", format="shards", challenge="multicoil", hr_crop=GRID)


def test_a_shard_set_prepared_with_other_settings_or_format_is_refused(multicoil_shards, tmp_path):
    with pytest.raises(ShardSetError, match=r"hr_crop: shards \[32, 32\], run \[16, 16\]"):
        ShardSliceDataset(str(multicoil_shards), "val", ShardSettings("multicoil", (16, 16)))
    with pytest.raises(ShardSetError, match="challenge"):
        ShardSliceDataset(str(multicoil_shards), "val", ShardSettings("singlecoil", GRID))
    with pytest.raises(ShardSetError, match="no 'train' split"):
        ShardSliceDataset(str(multicoil_shards), "train", ShardSettings("multicoil", GRID))
    with pytest.raises(ShardSetError, match="not a shard set"):
        ShardSliceDataset(str(tmp_path), "val", ShardSettings("multicoil", GRID))
    other = tmp_path / "v0"
    shutil.copytree(multicoil_shards, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["version"] = 0
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardSetError, match="version 0"):
        ShardSliceDataset(str(other), "val", ShardSettings("multicoil", GRID))
    # Continuing a set with other settings is refused too.
    with pytest.raises(ShardSetError, match="other settings"):
        prepare_shards({"val": tmp_path}, multicoil_shards, ShardSettings("multicoil", (16, 16)), volumes_per_part=1,
                       progress=False)


TRIPPED = []


def _trip():
    TRIPPED.append(1)  # would run on unpickling
    return "payload"


class _Tripwire:
    def __reduce__(self):
        return (_trip, ())


def test_pickled_items_are_never_unpickled(tmp_path):
    from litdata.streaming.writer import BinaryWriter

    writer = BinaryWriter(cache_dir=str(tmp_path / "val" / "part-00000"), chunk_bytes="64KB")
    writer.add_item(0, {"images": _Tripwire(), "scale": torch.tensor(1.0), "target": torch.empty(0, 0), "slice": 0})
    writer.done()
    writer.merge(num_workers=1)
    volume = {"fname": "a.h5", "num_slices": 1, "metadata": {}, "max": None, "kspace_shape": [1, 32, 32],
              "fingerprint": "x"}
    manifest = {"format": shards_mod.SHARD_FORMAT, "version": shards_mod.SHARD_VERSION,
                "settings": ShardSettings("singlecoil", GRID).as_json(), "volumes_per_part": 1,
                "splits": {"val": {"complete": True, "parts": [{"name": "part-00000", "slices": 1,
                                                                 "volumes": [volume]}]}}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    dataset = ShardSliceDataset(str(tmp_path), "val", ShardSettings("singlecoil", GRID))
    with pytest.raises(ShardSetError, match="pickled"):
        dataset.read(0)
    assert not TRIPPED


def test_prepare_refuses_bad_input_and_foreign_outputs(tmp_path):
    data = tmp_path / "data"
    write_fastmri_dataset(data, "singlecoil", num_volumes=2, slices=2, recon_size=GRID, seed=5)
    bad = sorted(data.glob("*.h5"))[1]
    with h5py.File(bad, "r+") as f:
        k = f["kspace"][...]
        k[1, 3, 3] = np.nan
        f["kspace"][...] = k
    settings = ShardSettings("singlecoil", GRID)
    with pytest.raises(ValueError, match=rf"{bad.name}.*slice 1.*NaN"):
        prepare_shards({"val": data}, tmp_path / "s", settings, progress=False)
    with pytest.raises(ShardSetError, match="no 'val' split"):  # the set made so far is never read as done
        ShardSliceDataset(str(tmp_path / "s"), "val", settings)
    prepare_shards({"val": data}, tmp_path / "skip", settings, skip_bad_files=True, progress=False)
    kept = ShardSliceDataset(str(tmp_path / "skip"), "val", settings)
    assert sorted(kept.slices_per_volume()) == [sorted(data.glob("*.h5"))[0].name]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ShardSetError, match="not an .unfinished. shard set"):
        prepare_shards({"val": data}, busy, settings, progress=False)
    with pytest.raises(Exception, match="inside|contains|is"):
        prepare_shards({"val": data}, data / "shards", settings, progress=False)
    assert not (data / "shards").exists()


def test_the_data_module_reads_shards_as_it_reads_hdf5(multicoil_dir, multicoil_shards):
    common = dict(challenge="multicoil", hr_crop=GRID, batch_size=2, num_workers=0, use_dataset_cache=False)
    hdf5 = IconetDataModule(data_path=str(multicoil_dir.parent), val_path=str(multicoil_dir), **common)
    shard = IconetDataModule(data_path=str(multicoil_shards), format="shards", **common)
    for dm in (hdf5, shard):
        dm.setup("validate")
    batches = list(zip(hdf5.val_dataloader(), shard.val_dataloader()))
    assert len(batches) == 2
    for a, b in batches:
        _same(a, b)
    assert shard.split_path("val") == multicoil_shards / "val"
    with pytest.raises(ValueError, match="demo"):
        IconetDataModule(data_path=str(multicoil_shards), format="shards", demo=True, **common)


@pytest.mark.skipif(os.name != "posix", reason="POSIX paths")
def test_prepare_writes_nothing_into_the_source(multicoil_dir, multicoil_shards, tmp_path):
    assert sorted(p.suffix for p in multicoil_dir.iterdir()) == [".h5", ".h5"]
    import hashlib

    def state():
        return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in multicoil_dir.iterdir()}

    before = state()
    prepare_shards({"val": multicoil_dir}, tmp_path / "again", ShardSettings("multicoil", GRID), progress=False)
    assert state() == before  # not a byte nor a timestamp of the source changed


def test_settings_no_run_could_read_are_refused_before_any_file_is_read():
    """Review: these were accepted, and failed at the first slice after the value scan (scale 3), or were
    refused by every run after the whole set was written (scale 1, two scales)."""
    with pytest.raises(ValueError, match="unsupported scale 1"):
        ShardSettings("multicoil", (320, 320), espirit=(1, 20))
    with pytest.raises(ValueError, match="unsupported scale 3"):
        ShardSettings("multicoil", (321, 321), compact_scale=3)
    with pytest.raises(ValueError, match="not divisible by the scale 4"):
        ShardSettings("multicoil", (322, 320), compact_scale=4)
    with pytest.raises(ValueError, match="compact scale 2 and ESPIRiT scale 4 differ"):
        ShardSettings("multicoil", (320, 320), espirit=(4, 20), compact_scale=2)
    with pytest.raises(ValueError, match="complex64"):
        ShardSettings("multicoil", (320, 320), compact_scale=2, precision="float16")
    assert ShardSettings("multicoil", (320, 320), espirit=(2, 20), compact_scale=2).espirit == (2, 20)


@pytest.fixture(scope="module")
def espirit_shards(tmp_path_factory):
    """Multi-coil 128x128 volumes (4 coils) and shards carrying ESPIRiT maps for x2 with 16 centre lines."""
    root = tmp_path_factory.mktemp("esp")
    write_fastmri_dataset(root / "multicoil_val", "multicoil", num_volumes=1, slices=2, recon_size=(128, 128),
                          num_coils=4, seed=6)
    settings = ShardSettings("multicoil", (128, 128), espirit=(2, 16))
    prepare_shards({"val": root / "multicoil_val"}, root / "shards", settings, progress=False)
    return root


def _espirit_dm(root, center_fraction=0.25, **kw):
    mask = MaskConfig(name="equispaced", center_fractions=[center_fraction], accelerations=[4])
    return IconetDataModule(data_path=str(root / "shards"), format="shards", challenge="multicoil", scale=2,
                            mask=mask, hr_crop=(128, 128), batch_size=2, num_workers=0, **kw)


def test_shards_carry_espirit_maps_of_the_acquired_calibration_lines(espirit_shards, monkeypatch):
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.physics import sense
    from iconet_fastmri.physics.operators import rss
    from iconet_fastmri.pl_modules import IconetModule
    import iconet_fastmri.pl_modules.iconet_module as module_file

    dm = _espirit_dm(espirit_shards)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch.maps is not None and batch.maps.shape == (2, 4, 64, 64)
    module = IconetModule(ICONet(scale=2, width=8, blocks_per_stage=1, in_chans=2), acquisition=dm.acquisition,
                          mode="complex", coil_maps="espirit")
    deg = module.degrade(batch)
    # The same ESPIRiT computed on the fly from the simulated acquisition (its calibration region: these 16 lines).
    assert int(sense.calibration_region(batch.mask)[0, 0, 0].sum()) == 16
    fresh = sense.estimate_maps_espirit(deg.lr_observed, batch.mask)
    torch.testing.assert_close(batch.maps, fresh, rtol=0, atol=2e-4)
    # SENSE-combining the LR coil images with the stored maps gives their RSS inside the object.
    lr_images = sense.ifft2c(sense.crop_kspace(sense.fft2c(batch.hr_images), (64, 64)))
    combined, reference = sense.sense_combine(lr_images, batch.maps).abs()[:, 0], rss(lr_images)[:, 0]
    inside = reference > 0.2 * reference.amax(dim=(-2, -1), keepdim=True)
    assert float(((combined - reference).abs()[inside] / reference[inside]).max()) < 0.05
    # Training uses the stored maps: nothing is recomputed.
    monkeypatch.setattr(module_file, "estimate_maps_espirit", lambda *a: pytest.fail("ESPIRiT recomputed"))
    assert torch.equal(module.model_input(deg, batch.maps).maps, batch.maps)
    assert torch.isfinite(module.training_step(batch, 0))


def test_espirit_maps_from_other_lines_than_the_run_acquires_are_refused(espirit_shards):
    with pytest.raises(ShardSetError, match="from 16 calibration lines; this run is x2 and its mask acquires 5"):
        _espirit_dm(espirit_shards, center_fraction=0.08).setup("validate")
    with pytest.raises(ValueError, match="ESPIRiT needs a calibration region of at least 12.*give 8"):
        prepare_shards({"val": espirit_shards / "multicoil_val"}, espirit_shards / "too_few",
                       ShardSettings("multicoil", (128, 128), espirit=(2, 8)), progress=False)
    assert not (espirit_shards / "too_few").exists()  # refused before anything was read or written


def test_a_run_with_espirit_maps_refuses_a_mask_with_too_few_centre_lines_at_start_up():
    from iconet_fastmri.models.network_input import check_map_settings

    acquisition = Acquisition(2, MaskConfig(center_fractions=[0.08], accelerations=[4]))
    with pytest.raises(ValueError, match="calibration region of 5 lines on the LR grid 64x64; ESPIRiT needs at least 12"):
        check_map_settings("espirit", "multicoil", 2, acquisition, (128, 128))
    check_map_settings("rss", "multicoil", 2, acquisition, (128, 128))  # the RSS estimate works from 5 lines
    with pytest.raises(ValueError, match="needs multicoil data"):
        check_map_settings("espirit", "singlecoil", 2, acquisition, (128, 128))


@pytest.mark.parametrize("scale", [2, 4])
def test_compact_shards_give_the_hdf5_losses_and_metrics(multicoil_dir, tmp_path, scale):
    """The compact layout stores the LR k-space and the stage targets, not the HR images: ~7x fewer bytes at
    fastMRI size (docs/BENCHMARKS.md); the losses, reconstructions and targets are the HDF5 path's."""
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.pl_modules import IconetModule

    settings = ShardSettings("multicoil", GRID, compact_scale=scale)
    prepare_shards({"val": multicoil_dir}, tmp_path / "c", settings, progress=False)
    common = dict(challenge="multicoil", hr_crop=GRID, scale=scale, batch_size=2, num_workers=0,
                  use_dataset_cache=False)
    hdf5 = IconetDataModule(data_path=str(multicoil_dir.parent), val_path=str(multicoil_dir), **common)
    compact = IconetDataModule(data_path=str(tmp_path / "c"), format="shards", **common)
    torch.manual_seed(0)
    module = IconetModule(ICONet(scale=scale, width=8, blocks_per_stage=1), acquisition=hdf5.acquisition)
    for dm in (hdf5, compact):
        dm.setup("validate")
    for a, b in zip(hdf5.val_dataloader(), compact.val_dataloader()):
        assert b.hr_images.shape[-1] == 0 and b.compact is not None  # no HR images stored
        ea, eb = module.evaluate_batch(a), module.evaluate_batch(b)
        torch.testing.assert_close(eb.loss, ea.loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(eb.reconstruction, ea.reconstruction, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(eb.target, ea.target, rtol=1e-6, atol=0)
        torch.manual_seed(1)
        la = module.training_step(a, 0)
        torch.manual_seed(1)
        torch.testing.assert_close(module.training_step(b, 0), la, rtol=1e-6, atol=0)
    other = IconetDataModule(data_path=str(tmp_path / "c"), format="shards", **{**common, "scale": 6 - scale})
    with pytest.raises(ShardSetError, match=rf"compact shards for x{scale}.*this run is x{6 - scale}"):
        other.setup("validate")
    phase = IconetModule(ICONet(scale=scale, width=8, blocks_per_stage=1, in_chans=2), mode="complex",
                         lambda_phase=0.1, acquisition=compact.acquisition)
    with pytest.raises(ValueError, match="lambda_phase needs the HR coil images"):
        phase.training_step(next(iter(compact.val_dataloader())), 0)
    # ... and refused at start-up, before any step (the module's setup asks the data module).
    from iconet_fastmri.models.network_input import check_map_settings

    assert not compact.stores_images and hdf5.stores_images
    with pytest.raises(ValueError, match="lambda_phase needs the HR coil images"):
        check_map_settings("rss", "multicoil", 2, compact.acquisition, GRID, 0.1, compact.stores_images)
    check_map_settings("rss", "multicoil", 2, hdf5.acquisition, GRID, 0.1, hdf5.stores_images)


def test_review_fixes_manifest_names_remote_freshness(multicoil_shards, tmp_path):
    """A manifest's part or split names never become paths outside the cache; a remote manifest is
    fetched afresh (a set finished after a first read is seen finished; another set through the same
    cache gets its own manifest and chunk folder)."""
    evil = tmp_path / "evil"
    shutil.copytree(multicoil_shards, evil)
    manifest = json.loads((evil / MANIFEST).read_text())
    manifest["splits"]["val"]["parts"][0]["name"] = "../../../escaped"
    (evil / MANIFEST).write_text(json.dumps(manifest))
    settings = ShardSettings("multicoil", GRID)
    with pytest.raises(ShardSetError, match="not names this package writes"):
        ShardSliceDataset(f"local:{evil}", "val", settings, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "escaped").exists()

    remote = tmp_path / "bucket"
    shutil.copytree(multicoil_shards, remote)
    manifest = json.loads((remote / MANIFEST).read_text())
    manifest["splits"]["val"]["complete"] = False
    (remote / MANIFEST).write_text(json.dumps(manifest))
    cache = str(tmp_path / "cache")
    with pytest.raises(ShardSetError, match="unfinished"):
        ShardSliceDataset(f"local:{remote}", "val", settings, cache_dir=cache)
    shutil.copy(multicoil_shards / MANIFEST, remote / MANIFEST)  # finished since
    first = ShardSliceDataset(f"local:{remote}", "val", settings, cache_dir=cache)
    first.read(0)
    other = tmp_path / "other"
    prepare_shards({"val": multicoil_dir_of(multicoil_shards)}, other, ShardSettings("multicoil", GRID, precision="float16"),
                   volumes_per_part=1, progress=False)
    second = ShardSliceDataset(f"local:{other}", "val", settings, cache_dir=cache)
    assert second.precision == "float16" and first.precision == "complex64"
    assert not torch.equal(second.read(0)[0], first.read(0)[0])  # its own chunks, not the first set's
    assert not list(Path(cache).glob("*.partial*"))  # the fetched manifests are removed


def multicoil_dir_of(shards_root):
    return Path(json.loads((shards_root / MANIFEST).read_text())["splits"]["val"]["source"])


def test_espirit_checks_see_every_centre_width_the_masks_draw(espirit_shards):
    """Review: with several centre fractions the start-up checks looked at one draw (seed 0) only."""
    from iconet_fastmri.models.network_input import check_map_settings

    both = MaskConfig(name="equispaced", center_fractions=[0.25, 0.08], accelerations=[4, 4])
    acquisition = Acquisition(2, both)
    assert acquisition.centre_lines((128, 128)) == {16, 5}
    with pytest.raises(ValueError, match="calibration region of 5 lines"):
        check_map_settings("espirit", "multicoil", 2, acquisition, (128, 128))
    dm = IconetDataModule(data_path=str(espirit_shards / "shards"), format="shards", challenge="multicoil", scale=2,
                          mask=both, hr_crop=(128, 128), batch_size=2, num_workers=0)
    with pytest.raises(ShardSetError, match="its mask acquires 5, 16 centre lines"):
        dm.setup("validate")


def test_prepare_continues_with_skip_bad_files_after_stopping_at_a_bad_file(tmp_path):
    """Review: stopped at a bad file in a later part, a rerun with --skip_bad_files (as the message suggests)
    was refused as 'started from other files'; a changed finished volume must still be refused."""
    data = tmp_path / "data"
    write_fastmri_dataset(data, "singlecoil", num_volumes=3, slices=2, recon_size=GRID, seed=5)
    files = sorted(data.glob("*.h5"))
    with h5py.File(files[2], "r+") as f:
        k = f["kspace"][...]
        k[0, 1, 1] = np.nan
        f["kspace"][...] = k
    settings = ShardSettings("singlecoil", GRID)
    with pytest.raises(ValueError, match=files[2].name):
        prepare_shards({"val": data}, tmp_path / "s", settings, volumes_per_part=1, progress=False)
    prepare_shards({"val": data}, tmp_path / "s", settings, volumes_per_part=1, skip_bad_files=True, progress=False)
    done = ShardSliceDataset(str(tmp_path / "s"), "val", settings)
    assert sorted(done.slices_per_volume()) == [files[0].name, files[1].name]
    with h5py.File(files[0], "r+") as f:  # a finished volume changes: continuing would mix two versions
        f["kspace"][...] = f["kspace"][...] * 2
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    manifest["splits"]["val"]["complete"] = False
    manifest["splits"]["val"]["parts"] = manifest["splits"]["val"]["parts"][:1]
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardSetError, match="no longer lists first and unchanged"):
        prepare_shards({"val": data}, tmp_path / "s", settings, volumes_per_part=1, skip_bad_files=True, progress=False)
