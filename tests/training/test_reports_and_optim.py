"""What a run reports (reports.py) and its optimiser (pl_modules/optim.py), unit by unit."""

import json
from types import SimpleNamespace

import pytest
import torch

from iconet_fastmri.pl_modules.optim import adam_with_cosine
from iconet_fastmri.reports import FitSummary, VolumeMetricsFile


def _trainer(**kw):
    base = dict(global_rank=0, sanity_checking=False, global_step=12, callback_metrics={})
    base.update(kw)
    return SimpleNamespace(**base)


def _module(results=None, summary=None, epoch=3):
    return SimpleNamespace(volume_results={"val": results or {}}, eval_summary={"val": summary or {}},
                           current_epoch=epoch, method_name="iconet")


def test_volume_metrics_file_writes_each_validation_epoch_and_skips_the_sanity_check(tmp_path):
    path = tmp_path / "val.json"
    callback = VolumeMetricsFile(str(path))
    volumes = {"file1.h5": {"psnr": 30.0, "ssim": 0.9, "nmse": 0.01}}
    callback.on_validation_end(_trainer(sanity_checking=True), _module(volumes, {"psnr": 30.0}))
    assert not path.exists()
    callback.on_validation_end(_trainer(), _module(volumes, {"psnr": 30.0}, epoch=4))
    payload = json.loads(path.read_text())
    assert payload == {"stage": "val", "epoch": 4, "summary": {"psnr": 30.0}, "volumes": volumes}
    callback.on_validation_end(_trainer(global_rank=1), _module({}, {}, epoch=5))  # other ranks never write
    assert json.loads(path.read_text())["epoch"] == 4
    with pytest.raises(FileNotFoundError, match="no_such"):
        VolumeMetricsFile(str(tmp_path / "no_such" / "val.json"))


@pytest.mark.parametrize("psnr,verdict", [(21.5, "iconet beats the bicubic baseline by +3.50 dB"),
                                          (17.0, "iconet does NOT beat the bicubic baseline by -1.00 dB")])
def test_fit_summary_compares_with_the_bicubic_baseline(monkeypatch, psnr, verdict):
    import iconet_fastmri.reports as reports

    said = []
    monkeypatch.setattr(reports, "rank_zero_info", said.append)
    metrics = {"val/psnr": torch.tensor(psnr), "val/ssim": torch.tensor(0.7),
               "val/psnr_bicubic": torch.tensor(18.0), "val/ssim_bicubic": torch.tensor(0.35)}
    summary = FitSummary()
    summary.on_fit_start(_trainer(), _module())
    summary.on_fit_end(_trainer(callback_metrics=metrics), _module())
    assert said[0].startswith("[iconet-fastmri] fit took 0 min") and "(12 steps)" in said[0]
    assert verdict in said[1] and "bicubic on zero-filled: PSNR 18.00 dB, SSIM 0.3500" in said[1]


def test_adam_with_cosine_decays_to_lr_min_and_skips_untrained_models():
    weight = torch.nn.Parameter(torch.zeros(2))
    config = adam_with_cosine([weight], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0, scheduler="cosine",
                              lr_min=1e-5, epochs=4)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch" and optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    plain = adam_with_cosine([weight], 1e-3, (0.9, 0.999), 0.0, "none", 1e-5, 4)
    assert isinstance(plain, torch.optim.Adam)
    assert adam_with_cosine([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], 1e-3, (0.9, 0.999), 0.0,
                            "cosine", 1e-5, 4) is None
