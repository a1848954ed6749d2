"""Inference -> evaluation round trip on tiny generated data, against fastmri.evaluate."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fastmri import evaluate

from iconet_fastmri.evaluation import PredictionError, evaluate_folders, load_target_volume, summarize_rows
from iconet_fastmri.inference import run_inference
from iconet_fastmri.physics.masks import MaskConfig, mask_seed
from iconet_fastmri.models import ICONet
from iconet_fastmri.pl_modules import IconetModule

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A (randomly initialised) ICONet checkpoint with the data settings inference reads."""
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.manual_seed(0)
    module = IconetModule(ICONet(scale=2, width=8, blocks_per_stage=1))
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": __import__("pytorch_lightning").__version__,
            "epoch": 0,
            "global_step": 0,
            "IconetDataModule": {
                "scale": 2, "challenge": "singlecoil", "hr_crop": [32, 32],
                "mask": {"name": "random", "center_fractions": [0.08], "accelerations": [4.0],
                         "seed": None, "path": None, "options": {}},
            },
        },
        path,
    )
    return path


def test_inference_layout_attributes_and_determinism(tiny_checkpoint, singlecoil_dir, tmp_path):
    out1 = run_inference(singlecoil_dir, tmp_path / "a", checkpoint=tiny_checkpoint, batch_size=2, progress=False)
    out2 = run_inference(singlecoil_dir, tmp_path / "b", checkpoint=tiny_checkpoint, batch_size=3, progress=False)
    assert [p.name for p in out1] == sorted(p.name for p in singlecoil_dir.glob("*.h5"))
    for p1, p2 in zip(sorted(out1), sorted(out2)):
        with h5py.File(p1, "r") as f1, h5py.File(p2, "r") as f2:
            assert list(f1.keys()) == ["reconstruction"]
            rec = f1["reconstruction"]
            assert rec.dtype == np.float32 and rec.shape == (3, 32, 32)
            assert np.array_equal(rec[()], f2["reconstruction"][()])  # rerun (other batch size): identical
            attrs = dict(f1.attrs)
            assert attrs["scale"] == 2 and attrs["mask_name"] == "random"
            assert json.loads(attrs["mask_args"])["accelerations"] == [4.0]
            assert attrs["acceleration"] == 4.0
            # Effective acceleration relative to the HR grid: s^2 x the measured LR acceleration.
            assert attrs["effective_acceleration"] == pytest.approx(4 * attrs["effective_acceleration_lr"])
            # ... recomputed independently from the seeded masks of its slices.
            func = MaskConfig(name="random", accelerations=[4.0]).build()
            accs = [256 / float(func((16, 16), seed=mask_seed(p1.name, i))[0].sum()) for i in range(3)]
            assert attrs["effective_acceleration_lr"] == pytest.approx(np.mean(accs))
            assert "crc32" in attrs["mask_seed_rule"]
    assert not list((tmp_path / "a").glob(".*tmp"))  # no temporary files left behind


def test_no_overwrite_without_flag(tiny_checkpoint, singlecoil_dir, tmp_path):
    run_inference(singlecoil_dir, tmp_path / "o", checkpoint=tiny_checkpoint, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_inference(singlecoil_dir, tmp_path / "o", checkpoint=tiny_checkpoint, progress=False)
    run_inference(singlecoil_dir, tmp_path / "o", checkpoint=tiny_checkpoint, progress=False, overwrite=True)


def test_round_trip_equals_fastmri_evaluate(tiny_checkpoint, singlecoil_dir, tmp_path):
    run_inference(singlecoil_dir, tmp_path / "iconet", checkpoint=tiny_checkpoint, progress=False)
    run_inference(singlecoil_dir, tmp_path / "bicubic", baseline="zero_filled_bicubic", scale=2,
                  hr_crop=(32, 32), progress=False)
    rows = evaluate_folders(singlecoil_dir, [tmp_path / "iconet", tmp_path / "bicubic"])
    assert {r["method"] for r in rows} == {"iconet", "bicubic"}  # keyed by folder
    assert {r["model"] for r in rows} == {"iconet", "zero_filled_bicubic"}  # the files' method attribute
    for row in rows:
        target, _ = load_target_volume(singlecoil_dir / row["fname"], (32, 32))
        with h5py.File(tmp_path / ("iconet" if row["method"] == "iconet" else "bicubic") / row["fname"]) as f:
            pred = f["reconstruction"][()]
        # The file's own target equals our HR-target rule on this grid.
        with h5py.File(singlecoil_dir / row["fname"]) as f:
            esc = f["reconstruction_esc"][()]
        np.testing.assert_allclose(target, esc, rtol=1e-4, atol=1e-5 * esc.max())
        assert row["psnr"] == evaluate.psnr(target, pred)
        assert row["ssim"] == evaluate.ssim(target, pred).item()
        assert row["nmse"] == float(evaluate.nmse(target, pred))
    table = summarize_rows(rows, bootstrap=50)
    assert {t["method"] for t in table} == {"iconet", "bicubic"}
    for t in table:
        vals = [r["psnr"] for r in rows if r["method"] == t["method"] and (t["acquisition"] in ("all", r["acquisition"]))]
        assert t["psnr_mean"] == pytest.approx(np.mean(vals))


@pytest.mark.slow
def test_evaluate_script_outputs_and_errors(tiny_checkpoint, singlecoil_dir, tmp_path):
    run_inference(singlecoil_dir, tmp_path / "iconet", checkpoint=tiny_checkpoint, progress=False)
    run_inference(singlecoil_dir, tmp_path / "sinc", baseline="zero_filled_sinc", scale=2, hr_crop=(32, 32), progress=False)
    cmd = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--targets", str(singlecoil_dir),
           "--predictions", str(tmp_path / "iconet"), str(tmp_path / "sinc"), "--out", str(tmp_path / "eval"),
           "--bootstrap", "100", "--paired", "iconet", "sinc", "--figures", str(tmp_path / "fig")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("per_volume.csv", "summary.csv", "results.json", "table.md"):
        assert (tmp_path / "eval" / name).exists()
    assert (tmp_path / "fig" / "panel.png").stat().st_size > 1000
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert payload["paired"]["volumes"] == 2 and len(payload["per_volume"]) == 4
    assert "scored 4 (method, volume) pairs over 2 volumes, 6 slices" in proc.stdout and "slices/s" in proc.stdout
    assert "scoring" in proc.stderr  # the progress bar
    # A second run refuses to overwrite the tables.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr


def test_missing_volume_and_shape_mismatch_are_named(tiny_checkpoint, singlecoil_dir, tmp_path):
    out = run_inference(singlecoil_dir, tmp_path / "p", checkpoint=tiny_checkpoint, progress=False)
    out[0].unlink()
    with pytest.raises(PredictionError, match=rf"{out[0].name}.*missing prediction"):
        evaluate_folders(singlecoil_dir, [tmp_path / "p"])
    assert len(evaluate_folders(singlecoil_dir, [tmp_path / "p"], allow_missing=True)) == 1
    with h5py.File(out[1], "r+") as f:
        del f["reconstruction"]
        f["reconstruction"] = np.zeros((3, 30, 32), np.float32)
    with pytest.raises(PredictionError, match=rf"{out[1].name}.*\(3, 30, 32\).*\(3, 32, 32\)"):
        evaluate_folders(singlecoil_dir, [tmp_path / "p"], hr_crop=(32, 32), allow_missing=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictionError, match="empty.*no .h5 files"):
        evaluate_folders(singlecoil_dir, [tmp_path / "empty"])


def test_cli_predict_writes_what_run_inference_writes(tiny_checkpoint, singlecoil_dir, tmp_path):
    """`predict` (a BasePredictionWriter) and run_inference.py share one code path and write the same files."""
    from iconet_fastmri.cli import main

    reference = run_inference(singlecoil_dir, tmp_path / "inference", checkpoint=tiny_checkpoint, progress=False)
    main(["predict", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
          "--ckpt_path", str(tiny_checkpoint), "--data.data_path", str(tmp_path),
          "--data.test_path", str(singlecoil_dir), "--data.hr_crop", "[32, 32]", "--data.batch_size", "2",
          "--data.num_workers", "0", "--data.use_dataset_cache", "false",
          "--prediction_writer.out_dir", str(tmp_path / "predict")])
    for ref in reference:
        with h5py.File(ref) as a, h5py.File(tmp_path / "predict" / ref.name) as b:
            assert np.array_equal(a["reconstruction"][()], b["reconstruction"][()])
            same = {k for k in a.attrs if k != "checkpoint"}
            assert same <= set(b.attrs)
            for key in same:
                assert np.array_equal(np.asarray(a.attrs[key]), np.asarray(b.attrs[key])), key


@pytest.mark.slow
def test_mask_sweep_end_to_end(tiny_checkpoint, singlecoil_dir, tmp_path):
    """scripts/mask_sweep.py: a checkpoint and a baseline x 2 masks x 2 accelerations -> table and plot."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mask_sweep.py"), "--methods", str(tiny_checkpoint),
         "zero_filled_bicubic", "--scale", "2", "--hr_crop", "32", "32", "--data_path", str(singlecoil_dir),
         "--masks", "random", "poisson", "--accelerations", "2", "4", "--bootstrap", "50",
         "--out", str(tmp_path / "sweep")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"model", "zero_filled_bicubic"}
    trained = [r for r in rows if r["training_mask"] == "True"]
    assert [(r["method"], r["mask"], r["acceleration"]) for r in trained] == [("model", "random", "4.0")]
    for r in rows:  # s²·R is measured from the masks drawn: about 4 x R
        assert 0.6 * 4 * float(r["acceleration"]) < float(r["effective_acceleration"]) < 1.6 * 4 * float(r["acceleration"])
    # Each cell's numbers are those of evaluate.py on the same predictions.
    folder = tmp_path / "sweep" / "predictions" / "model" / "poisson_R2"
    per_volume = evaluate_folders(singlecoil_dir, [folder])
    cell = [r for r in rows if r["method"] == "model" and r["mask"] == "poisson" and r["acceleration"] == "2.0"][0]
    assert float(cell["psnr_mean"]) == pytest.approx(np.mean([v["psnr"] for v in per_volume]))
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000
    assert "| model | random | 4 |" in (tmp_path / "sweep" / "sweep.md").read_text()


@pytest.mark.slow
def test_reproduce_demo_end_to_end_and_resumable(tmp_path):
    """scripts/reproduce.py --demo: train, infer, evaluate, table; a rerun skips every finished step."""
    tiny = ["--data.data_path", str(tmp_path / "data"), "--data.demo_volumes", "[2, 1]",
            "--data.demo_slices", "2", "--data.hr_crop", "[32, 32]", "--data.batch_size", "2",
            "--trainer.max_epochs", "1", "--model.model.init_args.width", "4",
            "--model.model.init_args.blocks_per_stage", "1"]
    readme = tmp_path / "README.md"
    readme.write_text("# Results\n\n<!-- reproduce:demo -->\nold table\n<!-- /reproduce:demo -->\n\nText after.\n")
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--demo", "--methods", "iconet", "bicubic",
           "--out", str(tmp_path / "out"), "--bootstrap", "20", "--readme", str(readme), *tiny]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[reproduce] train_iconet: " in first.stdout and "train_iconet_fastmri.py fit" in first.stdout
    table = (tmp_path / "out" / "eval" / "table.md").read_text()
    assert "| iconet |" in table and "| bicubic |" in table
    steps = sorted(p.name for p in (tmp_path / "out" / "steps").glob("*.done"))
    assert steps == ["evaluate.done", "infer_bicubic.done", "infer_iconet.done", "train_iconet.done"]
    written = readme.read_text()
    assert "old table" not in written and written.endswith("<!-- /reproduce:demo -->\n\nText after.\n")
    block = written.split("<!-- reproduce:demo -->\n")[1].split("<!-- /reproduce:demo -->")[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["bicubic", "iconet"]  # one row per method
    for row in rows:  # the same rows as the evaluation's own table
        assert row in table
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0 and second.stdout.count("done before, skipped") == 4
    assert readme.read_text() == written  # the rerun writes the same table


def test_reproduce_readme_needs_its_markers(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="reproduce:demo"):
        module.write_readme_table(readme, "demo", "| method | acquisition |\n|---|---|\n| a | all |\n")
    assert readme.read_text() == "no markers here\n"
    # a marker twice (once quoted in prose) is refused by the command itself, before any work starts
    twice = "see the `<!-- reproduce:demo -->` line\n<!-- reproduce:demo -->\nold\n<!-- /reproduce:demo -->\n"
    readme.write_text(twice)
    with pytest.raises(SystemExit, match=r"README\.md: <!-- reproduce:demo --> occurs 2 times"):
        module.main(["--demo", "--out", str(tmp_path / "out"), "--readme", str(readme)])
    assert not (tmp_path / "out").exists() and readme.read_text() == twice
    table = ("| method | acquisition | PSNR (dB) |\n|---|---|---|\n| a | AXT1 | 20 |\n| a | AXT2 | 22 |\n"
             "| a | all | 21 |\n| b | AXT1 | 19 |\n| b | all | 19 |\n")
    assert module.pooled_rows(table).splitlines()[2:] == ["| a | all | 21 |", "| b | all | 19 |"]
    single = "| method | acquisition | PSNR (dB) |\n|---|---|---|\n| a | AXT1 | 20 |\n"
    assert module.pooled_rows(single).splitlines()[2:] == ["| a | AXT1 | 20 |"]  # one acquisition: its rows
