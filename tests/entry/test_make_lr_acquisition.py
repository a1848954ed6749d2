"""scripts/make_lr_acquisition.py as a user runs it: a subprocess, from a folder outside the package."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iconet_fastmri.data.lr_files import read_lr_file
from iconet_fastmri.demo import write_fastmri_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_lr_acquisition.py"


def _run(cwd, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_make_lr_files_from_fastmri_files_and_refuse_to_write_near_the_source(tmp_path):
    src = tmp_path / "multicoil_val"
    write_fastmri_dataset(src, "multicoil", num_volumes=2, slices=2, recon_size=(32, 32), num_coils=3, seed=1)
    before = {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
    out = tmp_path / "lr" / "multicoil_val"
    proc = _run(tmp_path, "--data_path", src, "--out", out, "--scale", "2", "--accelerations", "4")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 low-resolution acquisition file(s)" in proc.stdout
    rates = []
    for name in before:
        scan = read_lr_file(out / name)
        assert scan.kspace.shape == (2, 3, 32, 18) and scan.encoded == (32, 18) and scan.recon == (16, 16)
        assert scan.mask[:, :, 9].all()  # the centre (DC) column is always acquired
        rates += [m.size / m.sum() for m in scan.mask[:, 0]]
        assert scan.attrs["lr_scale"] == 2 and scan.attrs["lr_source"] == name
    assert 2.5 <= np.mean(rates) <= 7.0, rates  # R = 4 on 18 columns, drawn per slice
    assert {p.name: p.stat().st_mtime_ns for p in src.iterdir()} == before  # the source is untouched

    again = _run(tmp_path, "--data_path", src, "--out", out, "--scale", "2")
    assert again.returncode == 1 and "already holds 2 of these files" in again.stderr
    inside = _run(tmp_path, "--data_path", src, "--out", src / "lr", "--scale", "2")
    assert inside.returncode == 1 and "--out" in inside.stderr and not (src / "lr").exists()
    odd = _run(tmp_path, "--data_path", src, "--out", tmp_path / "lr8", "--scale", "8")
    assert odd.returncode == 1 and "not divisible by the scale 8" in odd.stderr
    assert np.isfinite(read_lr_file(out / name).kspace).all()


@pytest.mark.slow
def test_compare_acquired_input_from_the_command_line(tmp_path):
    """scripts/compare_acquired_input.py (docs/ACQUIRED.md): zero without oversampling is in the unit tests;
    here the demo's shape (readout 2x, phase encode 36 for 32) gives a small, non-zero difference under
    the derived bound, which the script prints beside it (and checks slice by slice)."""
    src = tmp_path / "singlecoil_val"
    write_fastmri_dataset(src, "singlecoil", num_volumes=1, slices=2, recon_size=(32, 32), seed=2)
    script = SCRIPT.with_name("compare_acquired_input.py")
    proc = subprocess.run([sys.executable, str(script), "--data_path", str(src), "--hr_crop", "32", "32",
                           "--margin", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    median = float(proc.stdout.split("median ")[1].split(",")[0])
    bound = float(proc.stdout.split("derived bound (whole image): median ")[1].split(",")[0])
    assert 0 < median < bound < 0.2, proc.stdout
