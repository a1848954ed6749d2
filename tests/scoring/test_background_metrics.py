"""Issue 22, item 5: a background diagnostic in validation.

Each scored volume carries PSNR/SSIM inside the object and in the background
(object = target > 10 % of the volume maximum, the rule of the DC analysis in
docs/MULTICOIL.md), the background's signed bias and the fraction of negative
prediction pixels; they flow through VolumeAccumulator / summarize into the
module's ``val/...`` logs, while fastMRI's ``nmse`` / ``psnr`` / ``ssim`` stay as
they were.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastmri import evaluate
from skimage.metrics import structural_similarity

from iconet_fastmri.metrics import VolumeAccumulator, summarize, volume_metrics


def _volume(seed: int = 0):
    """A disc (object, 1.0 ± texture) in a large noisy background (~0.01) on 3 slices of 40 x 48."""
    rng = np.random.RandomState(seed)
    s, h, w = 3, 40, 48
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 20) ** 2 + (xx - 22) ** 2 < 11**2
    target = np.abs(0.01 * rng.randn(s, h, w)).astype(np.float32)
    target[:, disc] = (0.8 + 0.2 * rng.rand(s, int(disc.sum()))).astype(np.float32)
    pred = (target + 0.02 * rng.randn(s, h, w)).astype(np.float32)
    return target, pred, np.broadcast_to(disc, target.shape)


def _score(target, pred, methods=None):
    acc = VolumeAccumulator({"a.h5": target.shape[0]})
    methods = methods or {"": pred}
    for i in range(target.shape[0]):
        acc.add("a.h5", i, target[i], {k: v[i] for k, v in methods.items()})
    return acc.finalize()["a.h5"]


def _numpy_reference(target, pred, obj):
    """Region metrics by hand: PSNR with the volume max as data range, SSIM map averaged over the region."""
    maxval = float(target.max())
    t, p = target.astype(np.float64), pred.astype(np.float64)
    ref = {}
    maps = np.stack([structural_similarity(target[i], pred[i], data_range=maxval, full=True)[1]
                     for i in range(target.shape[0])])
    interior = np.zeros(target.shape, bool)
    interior[:, 3:-3, 3:-3] = True
    for name, region in (("object", obj), ("background", ~obj)):
        mse = np.mean((t[region] - p[region]) ** 2)
        ref[f"psnr_{name}"] = 10 * np.log10(maxval**2 / mse)
        ref[f"ssim_{name}"] = float(maps[region & interior].mean())
    ref["background_bias"] = float(np.mean(p[~obj] - t[~obj]) / maxval)
    ref["negative_fraction"] = float(np.mean(pred < 0))
    return ref


def test_region_metrics_match_a_numpy_computation_on_a_known_object():
    target, pred, disc = _volume()
    # The threshold rule recovers the disc exactly (object ≥ 0.8, background ≲ 0.05 ≪ 0.1 × max).
    assert np.array_equal(target > 0.1 * target.max(), disc)
    row = _score(target, pred)
    for key, value in _numpy_reference(target, pred, disc).items():
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert 0 < row["negative_fraction"] < 1


def test_a_whole_field_object_reproduces_fastmri_psnr_and_ssim():
    """With every pixel inside the object, the region numbers are fastMRI's whole-volume ones."""
    rng = np.random.RandomState(1)
    target = (1.0 + rng.rand(2, 24, 24)).astype(np.float32)  # min > 10 % of max: no background
    pred = (target + 0.1 * rng.randn(2, 24, 24)).astype(np.float32)
    row = _score(target, pred)
    assert row["psnr_object"] == pytest.approx(float(evaluate.psnr(target, pred)), rel=1e-9)
    assert row["ssim_object"] == pytest.approx(evaluate.ssim(target, pred).item(), rel=1e-6)
    assert "psnr_background" not in row and "background_bias" not in row  # empty region: left out, not NaN


def test_negative_background_bias_shows_in_the_new_numbers_and_not_in_the_old():
    target, pred, disc = _volume(2)
    biased = pred.copy()
    biased[:, ~disc[0]] -= 0.03  # the regression: a negative bias painted over the background
    clean, bad = _score(target, pred), _score(target, biased)
    # fastMRI's numbers are exactly fastmri.evaluate's, for both (the diagnostic changes none of them).
    for row, p in ((clean, pred), (bad, biased)):
        ref = volume_metrics(target, p)
        assert row["psnr"] == ref["psnr"] and row["ssim"] == ref["ssim"] and row["nmse"] == ref["nmse"]
    # The object is untouched, the background is visibly worse and negative.
    assert bad["psnr_object"] == pytest.approx(clean["psnr_object"], rel=1e-9)
    assert bad["ssim_object"] == pytest.approx(clean["ssim_object"], abs=0.02)  # only windows at the rim see the bias
    assert bad["psnr_background"] < clean["psnr_background"] - 2.0
    assert bad["ssim_background"] < clean["ssim_background"] - 0.05
    assert bad["background_bias"] < -0.02 < clean["background_bias"]
    assert bad["negative_fraction"] > 0.5 > clean["negative_fraction"] + 0.2
    # PSNR over the whole volume moves much less than the background's.
    assert clean["psnr"] - bad["psnr"] < clean["psnr_background"] - bad["psnr_background"]


def test_diagnostic_flows_through_summarize_for_method_and_baseline():
    target, pred, _ = _volume(3)
    baseline = np.clip(target + 0.05, 0, None).astype(np.float32)
    results = {"a.h5": _score(target, pred, {"": pred, "bicubic": baseline})}
    summary = summarize(results)
    names = ("psnr_object", "ssim_object", "psnr_background", "ssim_background", "background_bias",
             "negative_fraction")
    for name in names:
        assert name in summary and f"{name}_bicubic" in summary
        assert np.isfinite(summary[name]) and np.isfinite(summary[f"{name}_bicubic"])
    assert summary["negative_fraction_bicubic"] == 0.0
    assert summary["background_bias_bicubic"] > 0
    assert summary["psnr"] == pytest.approx(volume_metrics(target, pred)["psnr"], rel=1e-12)
    assert summary["psnr_bicubic"] == pytest.approx(volume_metrics(target, baseline)["psnr"], rel=1e-12)


def test_module_logs_the_diagnostic_under_val(monkeypatch):
    """MriModule logs every summary key as ``val/<name>``: the new ones included."""
    from iconet_fastmri.pl_modules.mri_module import MriModule

    target, pred, _ = _volume(4)
    module = MriModule.__new__(MriModule)
    logged = {}
    monkeypatch.setattr(MriModule, "log", lambda self, name, value, **kw: logged.__setitem__(name, value),
                        raising=False)
    module._accumulator = VolumeAccumulator({"a.h5": 3})
    for i in range(3):
        module._accumulator.add("a.h5", i, target[i], {"": pred[i], "bicubic": 0.9 * target[i]})
    module._stage_results, module.eval_summary = {}, {}
    module._end_eval("val")
    for name in ("psnr_object", "ssim_object", "psnr_background", "ssim_background", "negative_fraction"):
        assert f"val/{name}" in logged and f"val/{name}_bicubic" in logged
    assert logged["val/psnr"] == pytest.approx(volume_metrics(target, pred)["psnr"], rel=1e-12)
