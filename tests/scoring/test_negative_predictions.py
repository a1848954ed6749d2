"""Issue 22, item 4: evaluation says when a magnitude is negative, and pools attribute-less files.

* A prediction with negative pixels is scored as given (fastMRI's metrics on the given arrays), but its
  per-volume fraction of negative pixels is recorded (``negative_fraction``; the summary rows keep its
  mean and max) and a :class:`NegativeMagnitudesWarning` names the folder, the volumes and the fractions.
  ``scripts/evaluate.py`` prints it and keeps it in results.json and table.md.
* A prediction file without the run's attributes is pooled with the other volumes of its folder (their
  method and, where they agree, their settings), not moved into an "unknown" row; where the settings
  cannot be inferred, a :class:`MissingAttributesWarning` names the files.
"""

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.evaluation import evaluate_folders, load_target_volume, summarize_rows
from iconet_fastmri.metrics import volume_metrics

ROOT = Path(__file__).resolve().parents[2]

RUN = {"method": "iconet", "hr_crop": np.array([32, 32]), "pad_if_smaller": False, "scale": 2,
       "acceleration": 4.0, "mask_name": "random", "effective_acceleration": 16.0}


def _evaluate_script():
    spec = importlib.util.spec_from_file_location("_script_evaluate_neg", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("neg") / "singlecoil_val"
    write_fastmri_dataset(folder, "singlecoil", num_volumes=3, slices=2, recon_size=(64, 64), seed=5)
    return folder


def _predictions(folder, raw, make, attrs=RUN, strip=(), grid=32):
    """One prediction per volume on the ``grid``: ``make(target, i)``; no attributes for files in ``strip``."""
    folder.mkdir(parents=True)
    for i, src in enumerate(sorted(raw.glob("*.h5"))):
        target, _ = load_target_volume(src, (grid, grid))
        with h5py.File(folder / src.name, "w") as f:
            f["reconstruction"] = make(target, i).astype(np.float32)
            if i not in strip:
                for key, value in (attrs[i] if isinstance(attrs, list) else attrs).items():
                    f.attrs[key] = value
    return folder


def _shift_down(target, i):
    """The first volume moved down by a fraction of its max (negative background), the others scaled."""
    return target - 0.2 * target.max() if i == 0 else target * 0.9


# ------------------------------------------------------------------ negative magnitudes
def test_negative_magnitudes_are_counted_per_volume_and_warned(raw, tmp_path):
    pred = _predictions(tmp_path / "shifted", raw, _shift_down)
    with pytest.warns(UserWarning, match=r"negative") as record:
        rows = evaluate_folders(raw, [pred])
    from iconet_fastmri.evaluation import NegativeMagnitudesWarning

    ours = [w for w in record if issubclass(w.category, NegativeMagnitudesWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    first = sorted(raw.glob("*.h5"))[0]
    assert str(pred) in text and first.name in text
    assert not any(src.name in text for src in sorted(raw.glob("*.h5"))[1:])  # only the volume with negatives
    by_name = {r["fname"]: r for r in rows}
    for i, src in enumerate(sorted(raw.glob("*.h5"))):
        target, _ = load_target_volume(src, (32, 32))
        scored = _shift_down(target, i).astype(np.float32)
        expected = float(np.mean(scored < 0))
        assert by_name[src.name]["negative_fraction"] == pytest.approx(expected)
        # the metrics are fastMRI's on the given arrays: no clamp
        for metric, value in volume_metrics(target, scored).items():
            assert by_name[src.name][metric] == pytest.approx(value)
    assert by_name[first.name]["negative_fraction"] > 0.01
    assert f"{by_name[first.name]['negative_fraction']:.3f}" in text  # the fraction is named
    table = [t for t in summarize_rows(rows) if t["acquisition"] == "all"] or summarize_rows(rows)
    assert len(table) == 1
    assert table[0]["negative_fraction_max"] == pytest.approx(by_name[first.name]["negative_fraction"])
    assert table[0]["negative_fraction_mean"] == pytest.approx(np.mean([r["negative_fraction"] for r in rows]))


def test_non_negative_predictions_give_no_negative_warning(raw, tmp_path, recwarn):
    pred = _predictions(tmp_path / "fine", raw, lambda t, i: t * 0.9)
    rows = evaluate_folders(raw, [pred])
    assert all(r["negative_fraction"] == 0.0 for r in rows)
    assert not [w for w in recwarn if "negative" in str(w.message)]


def test_the_script_prints_and_records_the_negative_warning(raw, tmp_path, capsys):
    pred = _predictions(tmp_path / "shifted", raw, _shift_down)
    _evaluate_script().main(["--targets", str(raw), "--predictions", str(pred), "--no_progress",
                             "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    first = sorted(raw.glob("*.h5"))[0].name
    assert "warning" in err and "negative" in err and first in err
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert any("negative" in w and first in w for w in payload["warnings"])
    assert all("negative_fraction" in r for r in payload["per_volume"])
    assert all("negative_fraction_max" in t for t in payload["summary"])
    assert "negative" in (tmp_path / "eval" / "table.md").read_text()
    assert "negative_fraction" in (tmp_path / "eval" / "per_volume.csv").read_text().splitlines()[0]


# ------------------------------------------------------------------ files without the run's attributes
def _pooled(rows):
    table = summarize_rows(rows)
    return [t for t in table if t["acquisition"] == "all"] or table


@pytest.mark.parametrize("grid", [64, 32])  # 64: the files' own reconstruction size (the issue's split)
def test_a_file_without_attributes_is_pooled_with_its_folder(raw, tmp_path, grid):
    attrs = dict(RUN, hr_crop=np.array([grid, grid]))
    pred = _predictions(tmp_path / "iconet", raw, lambda t, i: t * (0.9 - 0.1 * i), attrs=attrs, strip=(1,),
                        grid=grid)
    with pytest.warns(UserWarning, match=r"attribute") as record:
        rows = evaluate_folders(raw, [pred])
    stripped = sorted(raw.glob("*.h5"))[1].name
    from iconet_fastmri.evaluation import MissingAttributesWarning

    ours = [str(w.message) for w in record if issubclass(w.category, MissingAttributesWarning)]
    assert len(ours) == 1 and stripped in ours[0] and str(pred) in ours[0]  # said, naming the file
    assert len(rows) == 3
    for row in rows:  # the folder's settings (the effective acceleration is measured per volume: not taken)
        assert (row["model"], row["scale"], row["grid"], row["mask"], row["acceleration"]) == (
            "iconet", 2, f"{grid}x{grid}", "random", 4.0)
        assert row["effective_acceleration"] == (None if row["fname"] == stripped else 16.0)
    table = _pooled(rows)
    assert len(table) == 1 and table[0]["volumes"] == 3  # one row of 3, not 2 + an "unknown" row
    assert table[0]["psnr_mean"] == pytest.approx(np.mean([r["psnr"] for r in rows]))


def test_settings_that_cannot_be_inferred_are_said_loudly(raw, tmp_path):
    attrs = [dict(RUN, scale=2), {}, dict(RUN, scale=3, effective_acceleration=36.0)]
    pred = _predictions(tmp_path / "mixed", raw, lambda t, i: t * 0.9, attrs=attrs, strip=(1,))
    from iconet_fastmri.evaluation import MissingAttributesWarning

    with pytest.warns(MissingAttributesWarning) as record:
        rows = evaluate_folders(raw, [pred])
    stripped = sorted(raw.glob("*.h5"))[1].name
    text = " ".join(str(w.message) for w in record if issubclass(w.category, MissingAttributesWarning))
    assert stripped in text and "scale" in text and "cannot" in text
    row = {r["fname"]: r for r in rows}[stripped]
    assert row["scale"] is None and row["model"] == "iconet"  # what the folder agrees on is still taken


def test_a_folder_without_any_attributes_still_pools_silently(raw, tmp_path, recwarn):
    pred = _predictions(tmp_path / "fastmri_like", raw, lambda t, i: t * 0.9, attrs={})
    rows = evaluate_folders(raw, [pred], hr_crop=(32, 32))
    assert not [w for w in recwarn if "attribute" in str(w.message)]
    table = _pooled(rows)
    assert len(table) == 1 and table[0]["volumes"] == 3 and table[0]["scale"] is None


def test_the_script_records_the_missing_attributes_warning(raw, tmp_path, capsys):
    pred = _predictions(tmp_path / "iconet", raw, lambda t, i: t * 0.9, strip=(2,))
    _evaluate_script().main(["--targets", str(raw), "--predictions", str(pred), "--no_progress",
                             "--out", str(tmp_path / "eval")])
    captured = capsys.readouterr()
    stripped = sorted(raw.glob("*.h5"))[2].name
    assert "warning" in captured.err and stripped in captured.err
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert any(stripped in w for w in payload["warnings"])
    assert stripped in (tmp_path / "eval" / "table.md").read_text()
    # no "unknown" pooled row (only that volume's measured effective acceleration is unknown)
    assert {(t["scale"], t["grid"], t["mask"], t["acceleration"]) for t in payload["summary"]} == {
        (2, "32x32", "random", 4.0)}
    assert [t["volumes"] for t in payload["summary"] if t["acquisition"] == "all"] == [3]
