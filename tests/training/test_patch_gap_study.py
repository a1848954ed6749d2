"""scripts/patch_gap_study.py: its control trains what it says, and the command runs as docs/REAL_DATA.md types it.

Issue 22 item 3: the study behind the "Patch training" table. Its ``context`` control runs the network
on the whole slice and supervises only the patch, which separates what patches change in the loss
from what they change in what the network sees.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iconet_fastmri.models import ICONet, UnetSR
from iconet_fastmri.pl_modules import IconetDataModule, IconetModule

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "patch_gap_study.py"


def _script():
    spec = importlib.util.spec_from_file_location("_script_patch_gap_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def batch(patch_data):
    dm = IconetDataModule(data_path=str(patch_data), scale=2, hr_crop=(64, 64), patch_size=(32, 64), batch_size=4,
                          num_workers=0, use_dataset_cache=False,
                          mask={"name": "random", "center_fractions": [0.08], "accelerations": [4]})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len({int(r) for r in batch.patch[:, 0]}) > 1, "the batch should hold patches at several rows"
    return batch


@pytest.mark.parametrize("make_model", [lambda: UnetSR(scale=2, chans=4, num_pool_layers=2),
                                        lambda: ICONet(scale=2, width=8, blocks_per_stage=1)], ids=["unet_sr", "iconet"])
def test_the_context_control_runs_the_whole_slice_and_supervises_only_the_patch(batch, make_model):
    torch.manual_seed(0)
    control = _script().WholeSliceContext(make_model(), lr=1e-3)
    plain = IconetModule(control.model, lr=1e-3)  # the same weights, trained the usual way
    loss = control.training_step(batch, 0)

    # By hand: the whole slice's outputs and targets, cut with plain slicing at each stage's grid.
    deg = plain.degrade(batch)
    out = plain(plain.model_input(deg))
    H = deg.hr_target.shape[-2]

    def rows(images):
        cut = []
        for t in images:
            f = H // t.shape[-2]
            cut.append(torch.stack([t[b, :, int(r0) // f:(int(r0) + int(ph)) // f]
                                    for b, (r0, _, ph, _) in enumerate(batch.patch.tolist())]))
        return cut

    by_hand = type(out)(sr=rows([out.sr])[0], sr_stages=rows(out.sr_stages), rec_stages=rows(out.rec_stages),
                        norm_scale=out.norm_scale)
    expected, _ = plain.loss_fn(by_hand, rows(deg.stage_targets), rows(deg.rec_targets))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    whole, _ = plain.loss_fn(out, deg.stage_targets, deg.rec_targets)
    assert abs(float(loss.detach()) - float(whole)) > 1e-4 * float(whole), "the control must supervise the patch, not the slice"
    assert abs(float(loss.detach()) - float(plain.training_step(batch, 0).detach())) > 1e-4 * float(loss.detach()), \
        "the control must differ from a network that sees only the patch"


def test_the_study_runs_from_the_command_line_and_does_not_redo_finished_runs(tmp_path):
    args = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--models", "unet_sr", "--epochs", "1",
            "--eval_rows", "32", "48",
            "--extra", "--data.data_path", str(tmp_path / "demo"), "--data.demo_volumes", "[2, 1]",
            "--data.demo_slices", "2", "--model.model.init_args.chans", "4",
            "--model.model.init_args.num_pool_layers", "2"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "out" / "study.md").read_text()
    for variant in ("| full |", "| patches |", "| context |", "| patches, eval_window [32, 64] |",
                    "| patches, eval_window [48, 64] |"):
        assert variant in table, table
    assert table in proc.stdout
    metrics = json.loads((tmp_path / "out" / "unet_sr_context_s0" / "metrics.json").read_text())
    assert 0 < metrics["psnr"] < 100 and 0 < metrics["ssim"] <= 1
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*/metrics.json")}
    assert len(stamps) == 5
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (tmp_path / "out" / "study.md").read_text() == table
