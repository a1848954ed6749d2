"""Scores you can trust (issue 11, 5-14): no silent wrong number from evaluation, safe inference outputs."""

import os
import stat

import h5py
import numpy as np
import pytest
import torch

from iconet_fastmri.evaluation import (
    PredictionError,
    TargetError,
    evaluate_folders,
    format_table,
    load_target_volume,
    summarize_rows,
)
from iconet_fastmri.inference import run_inference, write_volume_atomic
from iconet_fastmri.metrics import volume_metrics


def _predictions(folder, singlecoil_dir, make, attrs=None):
    """One prediction file per volume of ``singlecoil_dir``: ``make(target) -> array``."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted(singlecoil_dir.glob("*.h5")):
        target, _ = load_target_volume(src, (32, 32))
        with h5py.File(folder / src.name, "w") as f:
            f["reconstruction"] = make(target)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    return folder


RUN = {"hr_crop": np.array([32, 32]), "scale": 2, "acceleration": 4.0, "mask_name": "random",
       "effective_acceleration": 16.0}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_prediction_is_an_error_naming_file_and_slice(singlecoil_dir, tmp_path, value):
    def make(target):
        out = target * 0.9
        out[1, 3, 4] = value
        return out

    _predictions(tmp_path / "p", singlecoil_dir, make, RUN)
    with pytest.raises(PredictionError, match=r"\.h5: 1 non-finite values \(NaN/Inf\) in slice\(s\) \[1\]"):
        evaluate_folders(singlecoil_dir, [tmp_path / "p"])


def test_complex_prediction_is_an_error(singlecoil_dir, tmp_path):
    _predictions(tmp_path / "p", singlecoil_dir, lambda t: t.astype(np.complex64), RUN)
    with pytest.raises(PredictionError, match="'reconstruction' is complex"):
        evaluate_folders(singlecoil_dir, [tmp_path / "p"])


def test_prediction_off_the_run_grid_is_an_error_unless_cropping_is_asked(singlecoil_dir, tmp_path):
    small = _predictions(tmp_path / "small", singlecoil_dir, lambda t: t[:, 4:28, 4:28], RUN)
    with pytest.raises(PredictionError, match=r"\(3, 24, 24\) does not match the target shape \(3, 32, 32\)"):
        evaluate_folders(singlecoil_dir, [small])
    big = _predictions(tmp_path / "big", singlecoil_dir, lambda t: np.pad(t, ((0, 0), (2, 2), (2, 2))), RUN)
    with pytest.raises(PredictionError, match=r"\(3, 36, 36\).*--crop_predictions"):
        evaluate_folders(singlecoil_dir, [big])
    rows = evaluate_folders(singlecoil_dir, [big], crop_predictions=True)
    assert all(r["ssim"] == pytest.approx(1.0) for r in rows)  # the crop is exactly the target
    # A file without hr_crop and a target without a reconstruction to take the grid from: ask.
    bare = _predictions(tmp_path / "bare", singlecoil_dir, lambda t: t, {})
    no_recon = tmp_path / "targets"
    no_recon.mkdir()
    for src in sorted(singlecoil_dir.glob("*.h5")):
        with h5py.File(src) as fin, h5py.File(no_recon / src.name, "w") as fout:
            for key in ("kspace", "ismrmrd_header"):
                fin.copy(key, fout)
            fout.attrs.update(dict(fin.attrs))
    with pytest.raises(PredictionError, match="no 'hr_crop' attribute.*--hr_crop"):
        evaluate_folders(no_recon, [bare])


def test_rows_are_keyed_by_folder_and_duplicate_names_are_an_error(singlecoil_dir, tmp_path):
    a = _predictions(tmp_path / "run_a" / "iconet", singlecoil_dir, lambda t: t * 0.9, {**RUN, "method": "iconet"})
    b = _predictions(tmp_path / "run_b" / "iconet", singlecoil_dir, lambda t: t * 0.8, {**RUN, "method": "iconet"})
    c = _predictions(tmp_path / "ablation", singlecoil_dir, lambda t: t * 0.7, {**RUN, "method": "iconet"})
    with pytest.raises(ValueError, match="both called 'iconet'.*--names"):
        evaluate_folders(singlecoil_dir, [a, b])
    rows = evaluate_folders(singlecoil_dir, [a, c])
    table = [t for t in summarize_rows(rows) if t["acquisition"] == "all"]
    assert sorted(t["method"] for t in table) == ["ablation", "iconet"]  # two rows, not one pooled
    assert all(t["volumes"] == 2 for t in table)
    rows = evaluate_folders(singlecoil_dir, [a, b], names=["full", "small"])
    assert {r["method"] for r in rows} == {"full", "small"}


def test_fastmri_save_reconstructions_output_pools(singlecoil_dir, tmp_path):
    from fastmri import save_reconstructions

    recons = {}
    for src in sorted(singlecoil_dir.glob("*.h5")):
        target, _ = load_target_volume(src, (32, 32))
        recons[src.name] = target * 0.9
    save_reconstructions(recons, tmp_path / "fastmri_unet")
    rows = evaluate_folders(singlecoil_dir, [tmp_path / "fastmri_unet"])
    table = [t for t in summarize_rows(rows) if t["acquisition"] == "all"]
    assert len(table) == 1 and table[0]["volumes"] == 2
    assert table[0]["scale"] is None and table[0]["acceleration"] is None
    assert table[0]["psnr_mean"] == pytest.approx(np.mean([r["psnr"] for r in rows]))
    assert "| fastmri_unet | " in format_table(table) and "unknown" in format_table(table)
    rows = evaluate_folders(singlecoil_dir, [tmp_path / "fastmri_unet"], scale=2, acceleration=4)
    table = [t for t in summarize_rows(rows) if t["acquisition"] == "all"]
    assert len(table) == 1 and table[0]["scale"] == 2 and table[0]["effective_acceleration"] == 16.0


def test_huge_declared_shapes_are_refused_before_reading(singlecoil_dir, tmp_path):
    pred = tmp_path / "huge"
    pred.mkdir()
    for src in sorted(singlecoil_dir.glob("*.h5")):
        with h5py.File(pred / src.name, "w") as f:  # a few KB on disk: nothing was written
            f.create_dataset("reconstruction", shape=(2, 100000, 100000), dtype="f4", chunks=(1, 64, 64))
    assert max(p.stat().st_size for p in pred.iterdir()) < 100_000
    with pytest.raises(PredictionError, match=r"declares shape \(2, 100000, 100000\).*refusing to read it"):
        evaluate_folders(singlecoil_dir, [pred], hr_crop=(32, 32))
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("reconstruction_esc", shape=(2, 100000, 100000), dtype="f4", chunks=(1, 64, 64))
    with pytest.raises(TargetError, match=r"target\.h5: 'reconstruction_esc' declares shape"):
        load_target_volume(target, (32, 32), target_key="reconstruction_esc")


def test_truncated_target_is_named(singlecoil_dir, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    files = sorted(singlecoil_dir.glob("*.h5"))
    for src in files:
        (targets / src.name).write_bytes(src.read_bytes())
    data = (targets / files[1].name).read_bytes()
    (targets / files[1].name).write_bytes(data[: len(data) // 2])
    pred = _predictions(tmp_path / "p", singlecoil_dir, lambda t: t * 0.9, RUN)
    with pytest.raises(TargetError, match=files[1].name):
        evaluate_folders(targets, [pred])


def test_inference_outputs_get_the_umask_default_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_volume_atomic(tmp_path / "v.h5", np.zeros((1, 4, 4)), {"method": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "v.h5").stat().st_mode) == 0o644  # as fastmri.save_reconstructions


def test_unwritable_output_folder_is_refused_before_any_model_work(singlecoil_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # The checkpoint does not exist either: the output folder must be checked first.
    with pytest.raises(PermissionError, match="a_file/out is not writable; nothing was computed|not writable"):
        run_inference(singlecoil_dir, blocker / "out", checkpoint=tmp_path / "missing.ckpt", progress=False)


def test_scores_still_equal_fastmri_evaluate(singlecoil_dir, tmp_path):
    pred = _predictions(tmp_path / "p", singlecoil_dir, lambda t: t * 0.9 + 1e-6, RUN)
    from fastmri import evaluate

    for row in evaluate_folders(singlecoil_dir, [pred]):
        # Independent reference: the file's own reconstruction_esc and fastmri.evaluate's functions.
        with h5py.File(singlecoil_dir / row["fname"]) as f:
            esc = f["reconstruction_esc"][()]
        target, _ = load_target_volume(singlecoil_dir / row["fname"], (32, 32))
        np.testing.assert_allclose(target, esc, rtol=1e-4, atol=1e-5 * esc.max())
        with h5py.File(pred / row["fname"]) as f:
            recon = f["reconstruction"][()]
        assert row["psnr"] == pytest.approx(float(evaluate.psnr(target, recon)), rel=1e-6)
        assert row["ssim"] == pytest.approx(float(np.asarray(evaluate.ssim(target, recon)).reshape(-1)[0]), rel=1e-6)
        assert row["nmse"] == pytest.approx(float(evaluate.nmse(target, recon)), rel=1e-6)
        assert row == {**row, **volume_metrics(target, recon)}
        assert torch.isfinite(torch.tensor(row["psnr"]))
