"""Tests of the multi-stage loss, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.losses import MultiStageLoss
from iconet_fastmri.models.common import magnitude
from iconet_fastmri.models import ICONet, SROutput, T2NetLike


def t(values) -> torch.Tensor:
    """A (1, 1, H, W) tensor from nested lists."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def _out(sr, rec, norm_scale=None) -> SROutput:
    return SROutput(sr=sr[-1], sr_stages=list(sr), rec_stages=list(rec), norm_scale=norm_scale)


# Two x2 stages (x4): SR at 2x2 and 4x4, reconstruction priors at 1x1 and 2x2.
SR = [t([[1.0, 2.0], [3.0, 4.0]]), torch.full((1, 1, 4, 4), 2.0)]
SR_TARGETS = [t([[0.0, 2.0], [5.0, 4.0]]), torch.full((1, 1, 4, 4), 1.5)]
REC = [t([[3.0]]), torch.zeros(1, 1, 2, 2)]
REC_TARGETS = [t([[1.0]]), t([[1.0, -1.0], [2.0, 0.0]])]
# By hand: L1(sr_1) = (1 + 0 + 2 + 0) / 4 = 0.75, L1(sr_2) = 0.5,
#          L1(rec_1) = 2, L1(rec_2) = (1 + 1 + 2 + 0) / 4 = 1.


def test_all_stages_by_hand() -> None:
    total, terms = MultiStageLoss()(_out(SR, REC), SR_TARGETS, REC_TARGETS)
    assert math.isclose(total.item(), 0.8 * (0.75 + 0.5) + 0.2 * (2.0 + 1.0), rel_tol=1e-6)
    assert math.isclose(total.item(), 1.6, rel_tol=1e-6)
    expected = {"sr_1": 0.75, "sr_2": 0.5, "rec_1": 2.0, "rec_2": 1.0, "sr": 1.0, "rec": 0.6}
    for key, value in expected.items():
        assert math.isclose(terms[key].item(), value, rel_tol=1e-6), key
    assert math.isclose(terms["total"].item(), 1.6, rel_tol=1e-6)
    assert not any(v.requires_grad for v in terms.values())


def test_last_stage_by_hand() -> None:
    total, terms = MultiStageLoss(supervise="last_stage")(_out(SR, REC), SR_TARGETS, REC_TARGETS)
    assert math.isclose(total.item(), 0.8 * 0.5 + 0.2 * 1.0, rel_tol=1e-6)
    assert set(terms) == {"sr_2", "rec_2", "sr", "rec", "total"}


def test_custom_weights_by_hand() -> None:
    total, _ = MultiStageLoss(lambda_sr=1.0, lambda_rec=0.5)(_out(SR, REC), SR_TARGETS, REC_TARGETS)
    assert math.isclose(total.item(), (0.75 + 0.5) + 0.5 * (2.0 + 1.0), rel_tol=1e-6)


def test_no_rec_stages_gives_zero_rec_term() -> None:
    total, terms = MultiStageLoss()(_out(SR, []), SR_TARGETS, REC_TARGETS)
    assert terms["rec"].item() == 0.0
    assert math.isclose(total.item(), 0.8 * 1.25, rel_tol=1e-6)


def test_complex_predictions_use_the_magnitude() -> None:
    # (re, im) = (3, 4) has magnitude 5, (0, 0) magnitude 0
    pred = torch.tensor([[3.0, 0.0]]).view(1, 1, 1, 2)
    pred = torch.cat([pred, torch.tensor([[4.0, 0.0]]).view(1, 1, 1, 2)], dim=1)
    pred.requires_grad_(True)
    target = t([[4.0, 1.0]])  # |5 - 4| = 1, |0 - 1| = 1
    total, terms = MultiStageLoss(lambda_sr=1.0)(_out([pred], []), [target], [])
    assert math.isclose(total.item(), 1.0, rel_tol=1e-5)
    total.backward()
    assert torch.isfinite(pred.grad).all()  # the eps keeps sqrt differentiable at 0
    assert torch.allclose(magnitude(pred.detach()), t([[5.0, 0.0]]), atol=1e-5)


def test_norm_scale_divides_each_slice() -> None:
    pred = torch.stack([torch.full((1, 2, 2), 3.0), torch.full((1, 2, 2), 3.0)])
    target = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 1.0)])
    scale = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)
    # slice 0: |3 - 1| / 1 = 2; slice 1: |3 - 1| / 4 = 0.5; mean = 1.25
    total, _ = MultiStageLoss(lambda_sr=1.0)(_out([pred], [], scale), [target], [])
    assert math.isclose(total.item(), 1.25, rel_tol=1e-6)
    off, _ = MultiStageLoss(lambda_sr=1.0, normalize=False)(_out([pred], [], scale), [target], [])
    assert math.isclose(off.item(), 2.0, rel_tol=1e-6)


def _degraded(scale: int = 4):
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 1, 8 * scale, 6 * scale, generator=g) * 1e-4
    cols = (torch.rand(2, 1, 1, 6, generator=g) < 0.5).float()
    return Acquisition(scale)(hr.to(torch.complex64), mask=cols)


def test_iconet_output_and_degraded_call() -> None:
    torch.manual_seed(0)
    degraded = _degraded()
    model = ICONet(scale=4, width=8, blocks_per_stage=1, num_heads=2)
    out = model(degraded.lr_input)
    total, terms = MultiStageLoss()(out, degraded.stage_targets, degraded.rec_targets)
    s = out.norm_scale
    assert s is not None
    by_hand = sum(
        0.8 * F.l1_loss(sr / s, target / s)
        for sr, target in zip(out.sr_stages, degraded.stage_targets)
    ) + sum(
        0.2 * F.l1_loss(rec / s, target / s)
        for rec, target in zip(out.rec_stages, degraded.rec_targets)
    )
    assert torch.allclose(total, by_hand, rtol=1e-5)
    assert set(terms) >= {"sr_1", "sr_2", "rec_1", "rec_2"}


def test_supervise_changes_the_loss() -> None:
    torch.manual_seed(0)
    degraded = _degraded()
    out = ICONet(scale=4, width=8, blocks_per_stage=1, num_heads=2)(degraded.lr_input)
    all_stages, _ = MultiStageLoss()(out, degraded.stage_targets, degraded.rec_targets)
    last, _ = MultiStageLoss(supervise="last_stage")(out, degraded.stage_targets, degraded.rec_targets)
    assert all_stages.item() > last.item() > 0


def test_complex_iconet_output_against_magnitude_targets() -> None:
    torch.manual_seed(0)
    degraded = _degraded(2)
    z = degraded.lr_input_complex
    model = ICONet(scale=2, in_chans=2, width=8, blocks_per_stage=1, num_heads=2)
    out = model(torch.cat([z.real, z.imag], dim=1))
    total, _ = MultiStageLoss()(out, degraded.stage_targets, degraded.rec_targets)
    s = out.norm_scale
    by_hand = 0.8 * F.l1_loss(magnitude(out.sr / s), degraded.hr_target / s) + 0.2 * F.l1_loss(
        magnitude(out.rec_stages[0] / s), degraded.lr_clean / s
    )
    assert torch.allclose(total, by_hand, rtol=1e-5)


def test_t2net_like_loss_pairs_by_grid() -> None:
    # one SR output at the HR grid, one reconstruction at the LR grid, at x4
    torch.manual_seed(0)
    degraded = _degraded(4)
    out = T2NetLike(scale=4, width=8, num_blocks=2, num_transfers=2)(degraded.lr_input)
    total, terms = MultiStageLoss(supervise="last_stage")(out, degraded.stage_targets, degraded.rec_targets)
    s = out.norm_scale
    by_hand = 0.8 * F.l1_loss(out.sr / s, degraded.hr_target / s) + 0.2 * F.l1_loss(
        out.rec_stages[0] / s, degraded.lr_clean / s
    )
    assert torch.allclose(total, by_hand, rtol=1e-5)
    all_stages, _ = MultiStageLoss()(out, degraded.stage_targets, degraded.rec_targets)
    assert torch.allclose(all_stages, total)  # one output per branch: the modes agree


def test_errors() -> None:
    with pytest.raises(ValueError, match="all_stages"):
        MultiStageLoss(supervise="first_stage")
    with pytest.raises(ValueError, match="matches 0 targets"):
        MultiStageLoss()(_out([torch.zeros(1, 1, 3, 3)], []), [torch.zeros(1, 1, 2, 2)], [])
    with pytest.raises(TypeError):
        MultiStageLoss()([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)], [])  # not an SROutput
