"""scripts/prepare_shards.py, then ``fit --data.format shards``, as a user runs them (subprocesses, outside the package).

The same run on HDF5 and on shards gives the same losses and validation metrics.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from iconet_fastmri.data.shards import MANIFEST
from iconet_fastmri.demo import write_fastmri_dataset

ROOT = Path(__file__).resolve().parents[2]


def _run(cwd, script, *args):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def _fit(cwd, run, *data_args):
    proc = _run(cwd, "train_iconet_fastmri.py", "fit", "--seed_everything", 0,
                "--trainer.accelerator", "cpu", "--trainer.devices", 1, "--trainer.max_epochs", 2,
                "--trainer.default_root_dir", run, "--trainer.logger", "CSVLogger",
                "--trainer.logger.save_dir", run, "--trainer.log_every_n_steps", 1,
                "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", 0,
                "--model.model", "ICONet", "--model.model.init_args.width", 8,
                "--model.model.init_args.blocks_per_stage", 1, "--model.lr", 3e-3,
                "--data.challenge", "multicoil", "--data.hr_crop", "[32, 32]", "--data.batch_size", 2,
                "--data.num_workers", 1, "--data.use_dataset_cache", "false", *data_args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = []
    for path in Path(run).rglob("metrics.csv"):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


@pytest.mark.slow
def test_prepare_shards_then_train_gives_the_hdf5_run(tmp_path):
    data = tmp_path / "fastmri"
    write_fastmri_dataset(data / "multicoil_train", "multicoil", num_volumes=2, slices=3, recon_size=(32, 32),
                          num_coils=3, seed=10)
    write_fastmri_dataset(data / "multicoil_val", "multicoil", num_volumes=2, slices=2, recon_size=(32, 32),
                          num_coils=3, seed=20, first_index=50)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    shards = tmp_path / "shards"
    proc = _run(tmp_path, "prepare_shards.py", "--data_path", data, "--challenge", "multicoil",
                "--hr_crop", 32, 32, "--out", shards, "--volumes_per_part", 1, "--chunk_bytes", "64KB")
    assert proc.returncode == 0, proc.stderr
    assert "train: 2 volume(s), 6 slice(s) in 2 part(s)" in proc.stdout
    assert "val: 2 volume(s), 4 slice(s) in 2 part(s)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before  # nothing written into the source

    written = {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()}
    again = _run(tmp_path, "prepare_shards.py", "--data_path", data, "--challenge", "multicoil",
                 "--hr_crop", 32, 32, "--out", shards, "--volumes_per_part", 1, "--chunk_bytes", "64KB")
    assert again.returncode == 0 and "train: 2 volume(s)" in again.stdout  # finished: nothing to redo
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file() and p.name != MANIFEST} == {
        p: t for p, t in written.items() if p.name != MANIFEST}  # no part rewritten
    # The compact layout and ESPIRiT flags from the command line: a compact set is written; ESPIRiT from
    # round(16 * 0.25) = 4 centre lines is refused at start-up, as a message, before anything is written.
    compact = _run(tmp_path, "prepare_shards.py", "--data_path", data, "--challenge", "multicoil", "--hr_crop", 32, 32,
                   "--out", tmp_path / "compact", "--compact_scale", 2, "--chunk_bytes", "64KB")
    assert compact.returncode == 0 and "val: 2 volume(s), 4 slice(s)" in compact.stdout, compact.stderr
    few = _run(tmp_path, "prepare_shards.py", "--data_path", data, "--challenge", "multicoil", "--hr_crop", 32, 32,
               "--out", tmp_path / "esp", "--espirit_scale", 2, "--espirit_center_fraction", 0.25)
    assert few.returncode == 1 and "these settings give 4" in few.stderr and "Traceback" not in few.stderr
    assert not (tmp_path / "esp").exists()
    other = _run(tmp_path, "prepare_shards.py", "--data_path", data, "--challenge", "multicoil",
                 "--hr_crop", 16, 16, "--out", shards)
    assert other.returncode == 1 and "other settings" in other.stderr and "Traceback" not in other.stderr

    hdf5 = _fit(tmp_path, tmp_path / "run_h5", "--data.data_path", data)
    shard = _fit(tmp_path, tmp_path / "run_shards", "--data.format", "shards", "--data.data_path", shards)
    for key in ("train/loss_step", "val/psnr", "val/ssim"):
        a = [float(r[key]) for r in hdf5 if r.get(key)]
        b = [float(r[key]) for r in shard if r.get(key)]
        assert len(a) == len(b) > 0, key
        np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=key)
    ckpt = tmp_path / "run_shards" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    # predict from the shards writes what run_inference.py writes from the HDF5 files.
    pred = _run(tmp_path, "train_iconet_fastmri.py", "predict", "--data.format", "shards", "--data.data_path", shards,
                "--data.challenge", "multicoil", "--data.hr_crop", "[32, 32]", "--data.num_workers", 0,
                "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--ckpt_path", ckpt,
                "--trainer.default_root_dir", tmp_path / "run_pred", "--prediction_writer.out_dir", tmp_path / "p_shards")
    assert pred.returncode == 0, pred.stderr[-3000:]
    inf = _run(tmp_path, "run_inference.py", "--checkpoint", ckpt, "--data_path", data / "multicoil_val",
               "--out", tmp_path / "p_h5")
    assert inf.returncode == 0, inf.stderr[-3000:]
    for f in sorted((tmp_path / "p_h5").glob("*.h5")):
        with h5py.File(f) as a, h5py.File(tmp_path / "p_shards" / f.name) as b:
            np.testing.assert_allclose(b["reconstruction"][()], a["reconstruction"][()], rtol=1e-5, atol=1e-9)

    wrong = _run(tmp_path, "train_iconet_fastmri.py", "fit", "--data.format", "shards", "--data.data_path", shards,
                 "--data.challenge", "multicoil", "--data.hr_crop", "[64, 64]", "--trainer.accelerator", "cpu",
                 "--trainer.default_root_dir", tmp_path / "run_wrong", "--trainer.max_epochs", 1,
                 "--model.model", "ICONet", "--model.model.init_args.width", 8)
    assert wrong.returncode != 0 and "hr_crop: shards [32, 32], run [64, 64]" in wrong.stderr
