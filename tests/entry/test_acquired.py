"""Reconstructing real low-resolution acquisitions (issue 23): exactness, the DC residual, refusals."""

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from iconet_fastmri.acquired import AccelerationWarning, dc_residual, reconstruct_acquired
from iconet_fastmri.data.lr_files import read_lr_file, write_lr_file
from iconet_fastmri.inference import run_inference
from iconet_fastmri.models import ICONet
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.masks import create_mask
from iconet_fastmri.pl_modules import IconetModule

from helpers.hr_files import write_hr_file
from helpers.runs import write_checkpoint

RANDOM_R4 = {"name": "random", "center_fractions": [0.08], "accelerations": [4.0]}
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run_inference.py"


def _checkpoint(path, mode, challenge="singlecoil", sr_dc="none"):
    torch.manual_seed(0)
    in_chans = 1 if mode == "magnitude" else 2
    dc = "hard" if mode == "complex" else "none"
    net = ICONet(scale=2, in_chans=in_chans, width=8, blocks_per_stage=1, data_consistency=dc, data_consistency_sr=sr_dc)
    module = IconetModule(net, acquisition=Acquisition(2, RANDOM_R4), mode=mode)
    write_checkpoint(path, module)
    if challenge != "singlecoil":
        ckpt = torch.load(path, weights_only=False)
        ckpt["IconetDataModule"]["challenge"] = challenge
        torch.save(ckpt, path)
    return path


def _folders(tmp_path, mask_func, coils=0):
    """An HR folder with one file without oversampling, and its low-resolution acquisition."""
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr.mkdir()
    write_hr_file(hr / "file_a.h5", coils)
    write_lr_file(hr / "file_a.h5", lr / "file_a.h5", 2, mask_func)
    return hr, lr


@pytest.mark.parametrize("mode,coils", [("magnitude", 0), ("complex", 0), ("complex", 3)])
def test_an_acquired_file_made_from_an_hr_file_reconstructs_like_the_retrospective_pipeline(tmp_path, mode, coils):
    """No oversampling: the file is exactly the retrospective measurement, so the outputs agree to float32 rounding."""
    challenge = "multicoil" if coils else "singlecoil"
    ckpt = _checkpoint(tmp_path / "m.ckpt", mode, challenge)
    hr, lr = _folders(tmp_path, create_mask(**RANDOM_R4), coils)
    run_inference(hr, tmp_path / "retro", checkpoint=ckpt, challenge=challenge, hr_crop=(32, 32), progress=False)
    written, rows = reconstruct_acquired(ckpt, lr, tmp_path / "acq")
    with h5py.File(tmp_path / "retro" / "file_a.h5") as f, h5py.File(written[0]) as g:
        retro, acquired = f["reconstruction"][()], g["reconstruction"][()]
        assert g.attrs["source"] == "acquired" and g.attrs["effective_acceleration"] == pytest.approx(
            4 * g.attrs["effective_acceleration_lr"])
    assert retro.shape == acquired.shape == (3, 32, 32)
    np.testing.assert_allclose(acquired, retro, rtol=0, atol=1e-5 * float(retro.max()))
    table = list(csv.DictReader(open(tmp_path / "acq" / "acquired.csv")))
    assert table[0]["file"] == "file_a.h5" and table[0]["output_grid"] == "32x32"
    residual = float(table[0]["dc_residual"])
    if mode == "magnitude":
        assert np.isnan(residual)  # a magnitude has no phase to compare with the samples
    else:
        assert np.isfinite(residual) and 0 <= residual < 0.5  # hard DC of the prior; the SR output is not projected


def test_the_residual_is_zero_for_the_truth_and_not_for_a_wrong_image():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32, dtype=torch.complex64)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., ::3] = 1
    for maps_lr in (None, torch.randn(2, 3, 16, 16, dtype=torch.complex64)):
        if maps_lr is None:
            op_measured = Acquisition(2).operator(mask, None, image_shape=(32, 32))(x)
        else:
            from iconet_fastmri.physics.operators import rss, sinc_upsample
            from iconet_fastmri.physics.sense import SenseOperator

            up = sinc_upsample(maps_lr, (32, 32))
            op_measured = SenseOperator(up / rss(up).clamp_min(1e-12), mask, lr_shape=(16, 16))(x)
        sr = torch.cat([x.real, x.imag], dim=1)
        assert float(dc_residual(sr, op_measured, mask, maps_lr).max()) < 1e-5
        assert float(dc_residual(0.5 * sr, op_measured, mask, maps_lr).min()) == pytest.approx(0.5, abs=1e-4)


def test_refusals_and_the_acceleration_warning(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt", "magnitude")
    hr, lr = _folders(tmp_path, create_mask("random", center_fractions=[0.3], accelerations=[1.2]))
    with pytest.warns(AccelerationWarning, match=r"file_a\.h5: acquired at R = 1\.\d+ .* trained at R = 4"):
        reconstruct_acquired(ckpt, lr, tmp_path / "out")
    with h5py.File(lr / "file_a.h5", "a") as f:
        f.attrs["lr_scale"] = 4
    with pytest.raises(ValueError, match=r"file_a\.h5: written for x4 .* upsamples x2"):
        reconstruct_acquired(ckpt, lr, tmp_path / "out2")
    assert not (tmp_path / "out2" / "file_a.h5").exists()
    poisson = tmp_path / "lr_poisson"
    poisson.mkdir()
    write_lr_file(hr / "file_a.h5", poisson / "file_a.h5", 2, create_mask("poisson", center_fractions=[0.08], accelerations=[4]))
    with pytest.raises(ValueError, match="undersamples both axes, but the model was trained on masks that undersample columns only"):
        reconstruct_acquired(ckpt, poisson, tmp_path / "out3")


@pytest.mark.slow
def test_run_inference_acquired_from_the_command_line(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt", "complex")
    _, lr = _folders(tmp_path, create_mask(**RANDOM_R4))
    for flag in (["--acquired"], []):  # files written by make_lr_acquisition.py are recognised without the flag
        out = tmp_path / f"out{len(flag)}"
        proc = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(ckpt), "--data_path", str(lr),
                               "--out", str(out), *flag], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "dc_residual" in proc.stdout and (out / "file_a.h5").exists() and (out / "acquired.csv").exists()
    # docs/ACQUIRED.md: the CLI's predict on the same folder, as typed there.
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name("train_iconet_fastmri.py")), "predict",
                           "--ckpt_path", str(ckpt), "--data.test_path", str(lr),
                           "--prediction_writer.out_dir", str(tmp_path / "predicted")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "out1" / "file_a.h5") as a, h5py.File(tmp_path / "predicted" / "file_a.h5") as b:
        np.testing.assert_allclose(b["reconstruction"][()], a["reconstruction"][()], rtol=1e-5, atol=1e-8)
    assert (tmp_path / "predicted" / "acquired.csv").exists()


@pytest.mark.parametrize("coils", [0, 4])
def test_oversampled_files_work_with_data_consistency_through_their_own_wider_grid(tmp_path, coils):
    """fastMRI-shaped files oversample the readout (2x) and the phase encode (144 columns for 128: the demo's).

    Magnitude models take the cropped zero-filled image. Models with data consistency use the scan's own
    samples on its wider phase-encode grid (``PhaseEncodeOversampling``): with hard DC of the output, the
    output plus the best-fitting content outside the field of view explains a single-coil scan's samples
    to float32 rounding (the residual ``acquired.csv`` reports), which the output without DC does not;
    with coils, the residual falls to less than half (maps estimated: no exact projection).
    (Refused before, with "phase encode is oversampled".)
    """
    from iconet_fastmri.demo import write_fastmri_dataset

    challenge = "multicoil" if coils else "singlecoil"
    src = tmp_path / challenge
    write_fastmri_dataset(src, challenge, num_volumes=1, slices=2, recon_size=(32, 32), num_coils=max(coils, 1), seed=5)
    lr = tmp_path / "lr"
    lr.mkdir()
    for f in src.glob("*.h5"):
        write_lr_file(f, lr / f.name, 2, create_mask(**RANDOM_R4))
    assert read_lr_file(next(lr.glob("*.h5"))).encoded == (32, 18)
    written, rows = reconstruct_acquired(_checkpoint(tmp_path / "m.ckpt", "magnitude", challenge), lr, tmp_path / "mag")
    with h5py.File(written[0]) as f:
        assert f["reconstruction"].shape == (2, 32, 32) and np.isfinite(f["reconstruction"][()]).all()
    residuals = {}
    for sr_dc in ("none", "hard"):
        ckpt = _checkpoint(tmp_path / f"c_{sr_dc}.ckpt", "complex", challenge, sr_dc=sr_dc)
        written, rows = reconstruct_acquired(ckpt, lr, tmp_path / f"cplx_{sr_dc}")
        with h5py.File(written[0]) as f:
            assert f["reconstruction"].shape == (2, 32, 32) and np.isfinite(f["reconstruction"][()]).all()
        residuals[sr_dc] = rows[0]["dc_residual"]
    if coils:  # the coil images are S·x only as far as the estimated maps are right: no exact projection
        assert residuals["hard"] < 0.5 * residuals["none"] < 0.5, residuals
    else:
        assert residuals["hard"] < 1e-5 < 0.01 < residuals["none"] < 1, residuals


def test_multicoil_files_with_different_coil_counts(tmp_path):
    """fastMRI brain volumes come with 4 to 20+ coils: each volume keeps its own count (no padding needed)."""
    ckpt = _checkpoint(tmp_path / "m.ckpt", "complex", "multicoil")
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr.mkdir()
    for name, coils in (("file_a.h5", 3), ("file_b.h5", 5)):
        write_hr_file(hr / name, coils, slices=2, seed=coils)
        write_lr_file(hr / name, lr / name, 2, create_mask(**RANDOM_R4))
    written, rows = reconstruct_acquired(ckpt, lr, tmp_path / "out")
    assert [r["file"] for r in rows] == ["file_a.h5", "file_b.h5"]
    for path, row in zip(written, rows):
        with h5py.File(path) as f:
            assert f["reconstruction"].shape == (2, 32, 32)
        assert np.isfinite(row["dc_residual"]) and row["dc_residual"] < 0.5


def _predict_args(tmp_path, ckpt, folder, out, stage="predict"):
    return [stage, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--ckpt_path", str(ckpt), "--data.data_path", str(tmp_path), "--data.test_path", str(folder),
            "--data.batch_size", "2", "--data.num_workers", "0", "--data.use_dataset_cache", "false",
            *(["--prediction_writer.out_dir", str(out)] if stage == "predict" else [])]


@pytest.mark.parametrize("coils", [0, 4])
def test_cli_predict_on_acquired_files_writes_what_run_inference_writes(tmp_path, coils):
    """``predict`` on a folder of low-resolution acquisitions (phase-encode oversampled, the demo's shape, with
    data consistency) writes the files, attributes and acquired.csv that run_inference.py --acquired writes;
    ``validate`` on such a folder is refused (no targets). Failed before: the folder was read as HR data."""
    from iconet_fastmri.cli import main
    from iconet_fastmri.demo import write_fastmri_dataset

    challenge = "multicoil" if coils else "singlecoil"
    src = tmp_path / "src"
    write_fastmri_dataset(src, challenge, num_volumes=2, slices=3, recon_size=(32, 32), num_coils=max(coils, 1), seed=4)
    lr = tmp_path / "lr"
    lr.mkdir()
    for f in src.glob("*.h5"):
        write_lr_file(f, lr / f.name, 2, create_mask(**RANDOM_R4))
    ckpt = _checkpoint(tmp_path / "m.ckpt", "complex", challenge, sr_dc="hard")
    written, rows = reconstruct_acquired(ckpt, lr, tmp_path / "reference")
    main(_predict_args(tmp_path, ckpt, lr, tmp_path / "predict"))
    for ref in written:
        with h5py.File(ref) as a, h5py.File(tmp_path / "predict" / ref.name) as b:
            np.testing.assert_allclose(b["reconstruction"][()], a["reconstruction"][()], rtol=1e-5,
                                       atol=1e-6 * float(a["reconstruction"][()].max()))
            assert set(a.attrs) == set(b.attrs) and b.attrs["source"] == "acquired"
            for key in set(a.attrs) - {"checkpoint", "dc_residual"}:
                assert np.array_equal(np.asarray(a.attrs[key]), np.asarray(b.attrs[key])), key
            assert b.attrs["dc_residual"] == pytest.approx(a.attrs["dc_residual"], rel=1e-3, abs=1e-6)
    table = list(csv.DictReader(open(tmp_path / "predict" / "acquired.csv")))
    assert [r["file"] for r in table] == [r["file"] for r in rows] and table[0]["output_grid"] == "32x32"
    with pytest.raises(ValueError, match="holds low-resolution acquisitions .* no targets"):
        main(_predict_args(tmp_path, ckpt, lr, None, stage="validate") + ["--data.val_path", str(lr)])


def test_a_mask_varying_along_an_oversampled_readout_in_any_slice_is_refused_at_start(tmp_path):
    """Checked on every slice when the folder is read, not on the first one only (then mid-run, after work)."""
    from iconet_fastmri.data.lr_dataset import AcquiredChunks
    from iconet_fastmri.demo import write_fastmri_dataset

    src = tmp_path / "src"
    write_fastmri_dataset(src, "singlecoil", num_volumes=1, slices=3, recon_size=(32, 32), seed=6)
    lr = tmp_path / "lr"
    lr.mkdir()
    name = next(src.glob("*.h5")).name
    write_lr_file(src / name, lr / name, 2, create_mask(**RANDOM_R4))
    with h5py.File(lr / name, "r+") as f:  # slice 2 loses one readout row: its mask varies along the readout
        kspace, mask = f["kspace"][()], np.broadcast_to(f["mask"][()][:, None, :], f["kspace"].shape).copy()
        assert kspace.shape[-2] > 16  # the readout is oversampled (32 rows for a 16-row grid)
        mask[2, 5] = 0
        kspace[2, 5] = 0
        del f["mask"], f["kspace"]
        f["mask"], f["kspace"] = mask.astype(np.float32), kspace
    AcquiredChunks(lr, 2, needs_mask=False)  # a magnitude model without DC takes the input alone
    with pytest.raises(ValueError, match=rf"{name}: a mask that varies along the oversampled readout"):
        AcquiredChunks(lr, 2, needs_mask=True, batch_size=1)


def test_a_slice_that_acquires_nothing_is_refused_when_the_folder_is_read(tmp_path):
    """An all-zero slice (no mask dataset: its mask is read from the non-zero columns) used to pass with a made-up R
    (grid size / 1) and reconstruct to nothing; now the folder is refused at start-up, naming the file and slice."""
    from iconet_fastmri.data.lr_dataset import AcquiredChunks

    hr, lr = _folders(tmp_path, create_mask(**RANDOM_R4))
    with h5py.File(lr / "file_a.h5", "r+") as f:
        kspace = f["kspace"][()]
        kspace[1] = 0
        del f["kspace"], f["mask"]
        f["kspace"] = kspace
    with pytest.raises(ValueError, match=r"file_a\.h5: slice\(s\) \[1\] acquire no samples"):
        AcquiredChunks(lr, 2, needs_mask=False)
