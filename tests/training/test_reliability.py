"""Interrupted training, atomic writes, untrusted files and determinism."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from iconet_fastmri.checkpoints import UnsafeCheckpointError, load_checkpoint
from iconet_fastmri.data.dataset import IconetSliceDataset
from iconet_fastmri.inference import write_volume_atomic

from helpers.runs import write_tiny_fit_data

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_iconet_fastmri.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_fit_data(tmp_path_factory.mktemp("rel"))


def _args(data, run, epochs, extra=()):
    return [
        sys.executable, str(SCRIPT), "fit",
        "--seed_everything", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.deterministic", "true",
        "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(run),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--model.model", "ICONet", "--model.model.init_args.width", "8",
        "--model.model.init_args.blocks_per_stage", "1", "--model.lr", "3e-3",
        "--data.data_path", str(data), "--data.scale", "2", "--data.hr_crop", "[32, 32]",
        "--data.batch_size", "2", "--data.num_workers", "1", "--data.use_dataset_cache", "false",
        *extra,
    ]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def _run(args, cwd):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=_env(), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted_and_runs_are_bitwise_identical(data, tmp_path):
    epochs = 3
    _run(_args(data, tmp_path / "a", epochs), tmp_path)
    _run(_args(data, tmp_path / "b", epochs), tmp_path)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    # Determinism: two seeded CPU runs are bitwise identical.
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key

    # Interrupted run: killed (SIGKILL) right after its first checkpoint, then resumed.
    run = tmp_path / "killed"
    slow = ["--trainer.callbacks+", "helpers.slow_callback.SlowTraining", "--trainer.callbacks.seconds", "0.4"]
    proc = subprocess.Popen(_args(data, run, epochs, slow), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_checkpoint(last)  # the checkpoint survived the kill
    assert killed["epoch"] == 0 and killed["global_step"] == 3
    _run(_args(data, run, epochs, ["--ckpt_path", "last"]), tmp_path)
    resumed = _weights(run)
    assert resumed["global_step"] == a["global_step"] == 9 and resumed["epoch"] == epochs - 1
    assert resumed["lr_schedulers"][0]["last_epoch"] == a["lr_schedulers"][0]["last_epoch"]
    for key in a["state_dict"]:
        torch.testing.assert_close(resumed["state_dict"][key], a["state_dict"][key], rtol=1e-5, atol=1e-6)
    opt_a, opt_r = a["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    for idx in opt_a:
        torch.testing.assert_close(opt_r[idx]["exp_avg_sq"], opt_a[idx]["exp_avg_sq"], rtol=1e-4, atol=1e-10)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """Lightning writes through an fsspec transaction: a failed save keeps the old file."""
    from fsspec.implementations.local import LocalFileOpener
    from lightning_fabric.utilities.cloud_io import _atomic_save

    path = tmp_path / "last.ckpt"
    _atomic_save({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)

    def broken_write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(LocalFileOpener, "write", broken_write, raising=False)
    with pytest.raises(OSError, match="simulated"):
        _atomic_save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    monkeypatch.undo()
    kept = load_checkpoint(path)
    assert kept["epoch"] == 0 and torch.equal(kept["state_dict"]["w"], torch.ones(3))


def test_inference_volume_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "vol.h5"

    def failing(self, key, value):
        raise RuntimeError("crash while writing attributes (simulated)")

    monkeypatch.setattr(h5py.AttributeManager, "__setitem__", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        write_volume_atomic(path, np.ones((2, 4, 4), np.float32), {"scale": 2})
    monkeypatch.undo()
    assert not path.exists() and not list(tmp_path.iterdir())
    write_volume_atomic(path, np.ones((2, 4, 4), np.float32), {"scale": 2})
    with h5py.File(path) as f:
        assert f["reconstruction"].shape == (2, 4, 4) and f.attrs["scale"] == 2


class _Evil:
    """Unpickling this creates a file: the crafted-checkpoint payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_and_nothing_runs(data, tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Evil(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt.*allow-list"):
        load_checkpoint(evil)
    assert not marker.exists()
    # Inference and the CLI's --ckpt_path go through the same loader.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_inference.py"), "--checkpoint", str(evil),
         "--data_path", str(data / "singlecoil_val"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "refusing to load checkpoint" in proc.stderr
    proc = subprocess.run(_args(data, tmp_path / "r", 1, ["--ckpt_path", str(evil)]),
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert proc.returncode != 0 and "refusing to load checkpoint" in proc.stderr
    assert not marker.exists()


def test_dataset_cache_is_private_json_and_rebuilt_when_unreadable(data, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A pickle planted where fastmri's SliceDataset would look is never read.
    (tmp_path / "dataset_cache.pkl").write_bytes(b"\x80\x04not a real pickle")
    cache = tmp_path / "cache"
    folder = data / "singlecoil_train"
    ds = IconetSliceDataset(folder, "singlecoil", use_dataset_cache=True, cache_dir=cache)
    files = list(cache.glob("dataset_*.json"))
    assert len(files) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    entries = json.loads(files[0].read_text())["files"]
    assert {Path(k).name for k in entries} == {p.name for p in folder.glob("*.h5")}
    # Keyed by the data path: another folder gets another cache file.
    IconetSliceDataset(data / "singlecoil_val", "singlecoil", use_dataset_cache=True, cache_dir=cache)
    assert len(list(cache.glob("dataset_*.json"))) == 2
    # A corrupt cache is rebuilt with a warning.
    files[0].write_text("{ this is not json")
    with caplog.at_level("WARNING"):
        again = IconetSliceDataset(folder, "singlecoil", use_dataset_cache=True, cache_dir=cache)
    assert "cannot be read" in caplog.text and len(again) == len(ds)
    assert json.loads(files[0].read_text())["version"] == 2  # format 2: per-file value-scan results
    # A stale entry (file changed since) is not trusted: the file is checked again.
    victim = sorted(folder.glob("*.h5"))[0]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    IconetSliceDataset(copy, "singlecoil", use_dataset_cache=True, cache_dir=cache)
    (copy / victim.name).write_bytes(b"garbage")
    from iconet_fastmri.data.validation import FastMRIFileError

    with pytest.raises(FastMRIFileError, match=victim.name):
        IconetSliceDataset(copy, "singlecoil", use_dataset_cache=True, cache_dir=cache)


@pytest.mark.slow
def test_training_with_a_corrupt_file_skips_it_with_a_warning(data, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "singlecoil_train" / "file_demo_999.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    proc = subprocess.run(_args(bad, tmp_path / "r1", 1), capture_output=True, text=True, timeout=300,
                          env=_env(), cwd=tmp_path)
    assert proc.returncode != 0 and "file_demo_999.h5" in proc.stderr
    assert not (tmp_path / "r1" / "checkpoints").exists()  # stopped at start-up, before training
    proc = _run(_args(bad, tmp_path / "r2", 1, ["--data.skip_bad_files", "true"]), tmp_path)
    assert "skipping bad fastMRI file" in proc.stderr and "file_demo_999.h5" in proc.stderr
    assert (tmp_path / "r2" / "checkpoints" / "last.ckpt").exists()


def _shards(data, out):
    from iconet_fastmri.data.shard_writer import prepare_shards
    from iconet_fastmri.data.shards import ShardSettings

    prepare_shards({"train": data / "singlecoil_train", "val": data / "singlecoil_val"}, out,
                   ShardSettings("singlecoil", (32, 32)), volumes_per_part=1, chunk_bytes="64KB", progress=False)
    return ["--data.format", "shards", "--data.data_path", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hdf5", "shards"])
def test_sigkill_mid_epoch_resume_sees_the_batches_it_had_not_seen(data, tmp_path, fmt):
    """Killed after a mid-epoch checkpoint (step 4 of 3 per epoch), the resumed run trains on exactly the
    batches (slices and masks) the uninterrupted run trained on from there, and ends with its weights.
    Before, the loader restarted the epoch: it repeated the epoch's first batches with other masks."""
    fmt_args = _shards(data, tmp_path / "shards") if fmt == "shards" else []
    every = ["--checkpoint.last_every_n_steps", "1", *fmt_args]
    record = lambda path: ["--trainer.callbacks+", "helpers.slow_callback.RecordBatches",  # noqa: E731
                           "--trainer.callbacks.path", str(path)]
    _run(_args(data, tmp_path / "a", 2, every + record(tmp_path / "a.txt")), tmp_path)

    run = tmp_path / "killed"
    slow = ["--trainer.callbacks+", "helpers.slow_callback.SlowTraining", "--trainer.callbacks.seconds", "0.5"]
    proc = subprocess.Popen(_args(data, run, 2, every + record(tmp_path / "b.txt") + slow), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last, step, deadline = run / "checkpoints" / "last.ckpt", -1, time.time() + 300
    while step < 4 and proc.poll() is None and time.time() < deadline:
        if last.exists():
            step = load_checkpoint(last)["global_step"]
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_checkpoint(last)
    assert killed["global_step"] % 3 != 0, killed["global_step"]  # mid-epoch
    before_kill = len((tmp_path / "b.txt").read_text().splitlines())
    _run(_args(data, run, 2, every + record(tmp_path / "b.txt") + ["--ckpt_path", "last"]), tmp_path)

    resumed_batches = (tmp_path / "b.txt").read_text().splitlines()[before_kill:]
    uninterrupted = (tmp_path / "a.txt").read_text().splitlines()
    # "epoch step [files] [slices] mask checksum" of each batch: the same from the checkpoint on
    assert resumed_batches == uninterrupted[killed["global_step"]:]
    a, resumed = _weights(tmp_path / "a"), _weights(run)
    assert resumed["global_step"] == a["global_step"] == 6
    for key in a["state_dict"]:
        torch.testing.assert_close(resumed["state_dict"][key], a["state_dict"][key], rtol=1e-5, atol=1e-6)
