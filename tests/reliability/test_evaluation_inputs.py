"""Issue 21, classes 5 and 6 for scoring and the scripts.

* folders scored on different HR grids: the grid is a column of the table, and mixing them warns;
* fastMRI's own evaluation flags work without ``--out`` (the table is printed);
* a refusal of ``run_inference.py`` / ``evaluate.py`` prints its message without a traceback
  (``--debug`` or ``ICONET_DEBUG=1`` shows it) and exits non-zero.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.evaluation import evaluate_folders, format_table, summarize_rows

ROOT = Path(__file__).resolve().parents[2]


def _evaluate_script():
    spec = importlib.util.spec_from_file_location("_script_evaluate", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", num_volumes=2, slices=2, recon_size=(64, 64), seed=7)
    return folder


def _predictions(folder, raw, grid, attrs=True):
    """Predictions on a centre ``grid`` of each target (``hr_crop`` attribute = grid unless ``attrs`` is off)."""
    folder.mkdir(parents=True)
    for src in sorted(raw.glob("*.h5")):
        with h5py.File(src) as f:
            target = f["reconstruction_esc"][()]
        h, w = target.shape[-2:]
        top, left = (h - grid) // 2, (w - grid) // 2
        with h5py.File(folder / src.name, "w") as f:
            f["reconstruction"] = target[:, top:top + grid, left:left + grid] * 0.9
            if attrs:
                f.attrs["hr_crop"] = np.array([grid, grid])
                f.attrs["scale"] = 2
    return folder


# ------------------------------------------------------------------ 5: one table, two grids
def test_folders_scored_on_different_grids_say_so(raw, tmp_path):
    ours = _predictions(tmp_path / "ours", raw, 64)
    theirs = _predictions(tmp_path / "theirs", raw, 32)
    with pytest.warns(UserWarning, match=r"different HR grids.*ours: 64x64.*theirs: 32x32"):
        rows = evaluate_folders(raw, [ours, theirs])
    assert {(r["method"], r["grid"]) for r in rows} == {("ours", "64x64"), ("theirs", "32x32")}
    table = summarize_rows(rows)
    assert {(t["method"], t["grid"]) for t in table} == {("ours", "64x64"), ("theirs", "32x32")}
    text = format_table(table)
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert "grid" in header
    column = header.index("grid")
    cells = {line.strip("|").split("|")[0].strip(): line.strip("|").split("|")[column].strip()
             for line in text.splitlines()[2:]}
    assert cells == {"ours": "64x64", "theirs": "32x32"}


def test_one_grid_gives_no_warning_and_the_script_records_the_warning(raw, tmp_path, capsys, recwarn):
    ours = _predictions(tmp_path / "ours", raw, 64)
    other = _predictions(tmp_path / "other", raw, 64)
    evaluate_folders(raw, [ours, other])
    assert not [w for w in recwarn if "grid" in str(w.message)]
    theirs = _predictions(tmp_path / "theirs", raw, 32)
    _evaluate_script().main(["--targets", str(raw), "--predictions", str(ours), str(theirs), "--no_progress",
                             "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert "warning" in err and "different HR grids" in err
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert any("different HR grids" in w for w in payload["warnings"])
    assert "different HR grids" in (tmp_path / "eval" / "table.md").read_text()


# ------------------------------------------------------------------ 6: fastMRI's flags
def test_fastmri_evaluation_flags_need_no_output_folder(raw, tmp_path, capsys):
    pred = _predictions(tmp_path / "pred", raw, 64, attrs=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    _evaluate_script().main(["--target-path", str(raw), "--predictions-path", str(pred),
                             "--challenge", "singlecoil", "--no_progress"])
    out = capsys.readouterr().out
    assert "| pred |" in out and "PSNR" in out  # the table, printed
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # and nothing written


# ------------------------------------------------------------------ 6: refusals without a traceback
def _run(script, args, **env):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", **env))


@pytest.mark.slow
def test_script_refusals_print_the_message_without_a_traceback(raw, tmp_path):
    refusals = [
        ("run_inference.py", ["--baseline", "zero_filled_bicubic", "--scale", "2", "--data_path", str(raw),
                              "--out", str(raw), "--overwrite"], str(raw)),
        ("evaluate.py", ["--targets", str(raw), "--predictions", str(tmp_path / "missing")], "missing"),
    ]
    for script, args, named in refusals:
        proc = _run(script, args)
        assert proc.returncode not in (0, None), proc.stdout
        assert "Traceback" not in proc.stderr, proc.stderr
        assert named in proc.stderr and "error" in proc.stderr
        assert "--debug" in proc.stderr  # says how to see the traceback
        for debug in (_run(script, [*args, "--debug"]), _run(script, args, ICONET_DEBUG="1")):
            assert debug.returncode not in (0, None) and "Traceback" in debug.stderr and named in debug.stderr
