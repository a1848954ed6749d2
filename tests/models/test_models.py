"""Tests of ICONet, its blocks and fusion, and the baselines (CPU, small sizes)."""

from __future__ import annotations

import math
from typing import Dict, Iterator, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.physics.degradation import Degraded
from iconet_fastmri.physics.operators import crop_kspace, sinc_upsample
from iconet_fastmri.physics.fft import fft2c
from iconet_fastmri.losses import MultiStageLoss
from iconet_fastmri.models import (
    RSCFL,
    BicubicSR,
    ICONet,
    SROutput,
    SincSR,
    T2NetLike,
    UnetSR,
    available_models,
    build_model,
)
from iconet_fastmri.models.blocks import LayerNorm2d
from iconet_fastmri.models.common import channels_to_complex, per_slice_scale

SMALL = dict(width=8, blocks_per_stage=1, num_heads=2)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread: the tensors are tiny, and on a shared two-core machine
    extra threads only add oversubscription (10x slower overfit tests under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_iconet(**kwargs: object) -> ICONet:
    config: Dict[str, object] = dict(SMALL)
    config.update(kwargs)
    return ICONet(**config)  # type: ignore[arg-type]


def smooth_hr(hr_shape: Tuple[int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth positive HR images with a smooth phase, ``(B, 1, H, W)`` complex64."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 5, 6, generator=g)
    magnitude = F.interpolate(coarse, size=hr_shape, mode="bicubic", align_corners=False)
    magnitude = magnitude.clamp_min(0) + 0.2
    phase = F.interpolate(
        torch.rand(batch, 1, 3, 3, generator=g), size=hr_shape, mode="bilinear", align_corners=False
    )
    return torch.polar(magnitude, 2.0 * phase)


def column_mask(lr_shape: Tuple[int, int], batch: int = 1, seed: int = 1) -> torch.Tensor:
    """A random column mask ``(B, 1, h, w)`` (about 60% of columns, centre always sampled)."""
    g = torch.Generator().manual_seed(seed)
    h, w = lr_shape
    cols = (torch.rand(batch, 1, 1, w, generator=g) < 0.6).float()
    cols[..., w // 2] = 1.0
    return cols.expand(batch, 1, h, w).contiguous()


def degrade(
    scale: int, lr_shape: Tuple[int, int], batch: int = 2, intensity: float = 1.0
) -> Degraded:
    hr_shape = (lr_shape[0] * scale, lr_shape[1] * scale)
    hr = smooth_hr(hr_shape, batch) * intensity
    return Acquisition(scale)(hr, mask=column_mask(lr_shape, batch))


def model_input(degraded: Degraded, in_chans: int) -> torch.Tensor:
    if in_chans == 1:
        return degraded.lr_input
    z = degraded.lr_input_complex
    assert z is not None
    return torch.cat([z.real, z.imag], dim=1)


def run_model(model: torch.nn.Module, degraded: Degraded, in_chans: int) -> SROutput:
    x = model_input(degraded, in_chans)
    if getattr(model, "uses_kspace", False):
        return model(x, degraded.lr_observed, degraded.mask)
    return model(x)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("lr_shape", [(12, 16), (13, 17)])
@pytest.mark.parametrize("in_chans", [1, 2])
@pytest.mark.parametrize("scale", [2, 4])
def test_iconet_output_shapes(scale: int, in_chans: int, lr_shape: Tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = small_iconet(scale=scale, in_chans=in_chans)
    x = torch.randn(3, in_chans, *lr_shape)
    out = model(x)
    h, w = lr_shape
    stages = int(math.log2(scale))
    assert isinstance(out, SROutput)
    assert out.sr.shape == (3, in_chans, scale * h, scale * w)
    assert len(out.sr_stages) == stages and len(out.rec_stages) == stages
    for k in range(stages):
        assert out.sr_stages[k].shape == (3, in_chans, 2 ** (k + 1) * h, 2 ** (k + 1) * w)
        assert out.rec_stages[k].shape == (3, in_chans, 2**k * h, 2**k * w)
    assert out.sr is out.sr_stages[-1]
    assert out.norm_scale is not None and out.norm_scale.shape == (3, 1, 1, 1)
    assert out.sr.dtype == x.dtype


def test_iconet_scale8_has_three_stages_on_tiny_grid() -> None:
    model = small_iconet(scale=8)
    out = model(torch.rand(1, 1, 5, 3))
    assert [tuple(s.shape[-2:]) for s in out.sr_stages] == [(10, 6), (20, 12), (40, 24)]
    assert [tuple(r.shape[-2:]) for r in out.rec_stages] == [(5, 3), (10, 6), (20, 12)]


@pytest.mark.parametrize("lr_shape", [(12, 16), (13, 17)])
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("bicubic", {}),
        ("sinc", {}),
        ("unet_sr", {"chans": 8, "num_pool_layers": 4}),
        ("t2net_like", {"width": 8, "num_blocks": 2, "num_transfers": 2}),
    ],
)
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("in_chans", [1, 2])
def test_baseline_output_shapes(
    name: str, kwargs: dict, scale: int, in_chans: int, lr_shape: Tuple[int, int]
) -> None:
    torch.manual_seed(0)
    model = build_model(name, scale=scale, in_chans=in_chans, **kwargs)
    x = torch.rand(2, in_chans, *lr_shape)
    out = model(x)
    assert out.sr.shape == (2, in_chans, scale * lr_shape[0], scale * lr_shape[1])
    assert len(out.sr_stages) == 1 and out.sr_stages[0] is out.sr
    if name == "t2net_like":
        assert [r.shape for r in out.rec_stages] == [x.shape]
    else:
        assert out.rec_stages == []
    assert torch.isfinite(out.sr).all()


def test_registry() -> None:
    assert {"iconet", "bicubic", "sinc", "unet_sr", "t2net_like"} <= set(available_models())
    assert isinstance(build_model("iconet", **SMALL), ICONet)
    with pytest.raises(ValueError, match="unknown model 'no_such_model'; registered models: .*iconet"):
        build_model("no_such_model")
    with pytest.raises(ValueError, match=r"model 'iconet' does not take argument\(s\) \['widht'\]"):
        build_model("iconet", widht=8)


def test_model_spec_round_trip_and_refusal() -> None:
    from iconet_fastmri.models import MODELS, model_from_spec, model_spec, register_model
    from iconet_fastmri.models.common import SRModel

    torch.manual_seed(0)
    model = ICONet(scale=4, width=8, blocks_per_stage=1, fusion="concat")
    spec = model_spec(model)
    assert spec["class_path"] == "iconet_fastmri.models.iconet.ICONet"
    assert spec["init_args"]["width"] == 8 and spec["init_args"]["fusion"] == "concat"
    assert spec["init_args"]["scale"] == 4 and spec["init_args"]["num_heads"] == 4  # defaults filled in
    rebuilt = model_from_spec(spec)
    rebuilt.load_state_dict(model.state_dict())  # same architecture, strict
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(rebuilt(x).sr, model(x).sr)
    for name in ("ICONet", "iconet", "iconet_fastmri.models.ICONet"):
        assert isinstance(model_from_spec({"class_path": name, "init_args": {"width": 8}}), ICONet)
    # A class path that is not registered is refused, and never imported.
    with pytest.raises(ValueError, match="'os.system' is not a registered model"):
        model_from_spec({"class_path": "os.system", "init_args": {}})
    # A subclass records its own arguments (the most derived __init__), and registers.

    class Tiny(SRModel):
        def __init__(self, scale: int = 2, in_chans: int = 1, gain: float = 2.0) -> None:
            super().__init__(scale, in_chans)
            self.gain = gain

        def run(self, x, *args):
            from iconet_fastmri.models.common import SROutput, upsample_bicubic

            sr = upsample_bicubic(x, self.scale) * self.gain
            return SROutput(sr=sr, sr_stages=[sr])

    register_model("tiny_test", Tiny)
    try:
        tiny = model_from_spec(model_spec(Tiny(gain=3.0)))
        assert tiny.gain == 3.0 and tiny.init_args == {"scale": 2, "in_chans": 1, "gain": 3.0}
        out = tiny(torch.full((1, 1, 4, 4), 2.0))
        assert torch.allclose(out.sr, torch.full((1, 1, 8, 8), 6.0)) and out.norm_scale.item() == pytest.approx(2.0)
    finally:
        MODELS.unregister("tiny_test")


# --------------------------------------------------------------------------- gradients

GRAD_CONFIGS = [
    dict(scale=s, block=b, fusion=f, use_rec_branch=True)
    for s in (2, 4)
    for b in ("rscfl", "resblock")
    for f in ("adaptive", "concat", "none")
] + [dict(scale=s, block=b, use_rec_branch=False) for s in (2, 4) for b in ("rscfl", "resblock")]
GRAD_CONFIGS += [
    dict(scale=s, in_chans=2, data_consistency=dc)
    for s in (2, 4)
    for dc in ("none", "hard", "soft")
]
GRAD_CONFIGS += [dict(scale=s, in_chans=2, data_consistency_sr=dc) for s in (2, 4) for dc in ("hard", "soft")]


@pytest.mark.parametrize(
    "config", GRAD_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_backward_reaches_every_parameter(config: dict) -> None:
    torch.manual_seed(0)
    in_chans = int(config.get("in_chans", 1))
    model = small_iconet(**config)
    degraded = degrade(int(config["scale"]), (6, 5))
    loss, _ = MultiStageLoss()(run_model(model, degraded, in_chans), degraded.stage_targets, degraded.rec_targets)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize(
    "model",
    [
        lambda: UnetSR(scale=4, chans=4, num_pool_layers=2),
        lambda: T2NetLike(scale=4, width=8, num_blocks=3, num_transfers=2),
    ],
    ids=["unet_sr", "t2net_like"],
)
def test_baselines_backward_reaches_every_parameter(model) -> None:
    torch.manual_seed(0)
    net = model()
    degraded = degrade(4, (7, 6))
    loss, _ = MultiStageLoss(supervise="last_stage")(net(degraded.lr_input), degraded.stage_targets, degraded.rec_targets)
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- data consistency


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lr_shape", [(12, 16), (13, 17)])
def test_hard_dc_prior_matches_measured_samples(lr_shape: Tuple[int, int], normalize: bool) -> None:
    torch.manual_seed(0)
    intensity = 3e-4  # realistic fastMRI units: DC must undo the per-slice scale correctly
    degraded = degrade(4, lr_shape, intensity=intensity)
    model = small_iconet(scale=4, in_chans=2, data_consistency="hard", normalize=normalize)
    out = run_model(model, degraded, 2)
    mask = degraded.mask.bool()
    measured = degraded.lr_observed
    stage1 = fft2c(channels_to_complex(out.rec_stages[0]))
    stage2 = crop_kspace(fft2c(channels_to_complex(out.rec_stages[1])), lr_shape)
    for kspace in (stage1, stage2):
        # float32 round-off relative to the larger of the prior and the data (without
        # normalisation the untrained prior is far off the data's intensity scale)
        tol = 1e-5 * max(measured.abs().max().item(), kspace.abs().max().item())
        assert (kspace - measured)[mask].abs().max() < tol
        # where nothing was measured the prior keeps its own estimate
        assert (kspace - measured)[~mask].abs().max() > 100 * tol


def test_soft_dc_partially_enforces_measured_samples() -> None:
    torch.manual_seed(0)
    degraded = degrade(2, (12, 16))
    soft = small_iconet(scale=2, in_chans=2, data_consistency="soft", dc_lambda_init=3.0)
    torch.manual_seed(0)
    plain = small_iconet(scale=2, in_chans=2, data_consistency="none")
    plain.load_state_dict({k: v for k, v in soft.state_dict().items() if k != "dc_lambda_raw"})
    lam = soft.dc_lambdas()
    assert lam is not None and torch.allclose(lam, torch.full_like(lam, 3.0))
    mask = degraded.mask.bool()
    before = fft2c(channels_to_complex(run_model(plain, degraded, 2).rec_stages[0]))
    after = fft2c(channels_to_complex(run_model(soft, degraded, 2).rec_stages[0]))
    measured = degraded.lr_observed
    # k <- k + λ/(1+λ) (y - k) on the mask: the residual shrinks by 1/(1+λ)
    expected = (before - measured)[mask] / 4.0
    assert torch.allclose((after - measured)[mask], expected, atol=1e-5)
    assert torch.allclose(after[~mask], before[~mask], atol=1e-5)


def test_dc_requires_kspace_and_mask() -> None:
    model = small_iconet(in_chans=2, data_consistency="hard")
    with pytest.raises(ValueError, match="measured_kspace"):
        model(torch.rand(1, 2, 6, 6))
    with pytest.raises(ValueError, match="complex"):
        model(torch.rand(1, 2, 6, 6), torch.rand(1, 1, 6, 6), torch.ones(1, 1, 6, 6))


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("data_consistency", ["none", "hard"])
def test_outputs_are_in_input_units(data_consistency: str) -> None:
    torch.manual_seed(0)
    model = small_iconet(scale=4, in_chans=2, data_consistency=data_consistency)
    degraded = degrade(4, (6, 7))
    x = model_input(degraded, 2)
    c = 1e-4
    with torch.no_grad():
        ref = model(x, degraded.lr_observed, degraded.mask)
        scaled = model(c * x, c * degraded.lr_observed, degraded.mask)
    for a, b in zip(ref.sr_stages + ref.rec_stages, scaled.sr_stages + scaled.rec_stages):
        assert torch.allclose(c * a, b, rtol=1e-4, atol=1e-6 * c * a.abs().max().item())


# --------------------------------------------------------------------------- overfitting


def overfit(model: torch.nn.Module, loss_fn: MultiStageLoss, steps: int = 200, lr: float = 2e-3):
    hr = smooth_hr((32, 32), seed=3).abs().to(torch.complex64)
    patterns = {
        16: [1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0],
        8: [1, 0, 1, 1, 1, 0, 0, 1],
    }
    lr_width = 32 // model.scale
    cols = torch.tensor(patterns[lr_width], dtype=torch.float32).view(1, 1, 1, lr_width)
    degraded = Acquisition(model.scale)(hr, mask=cols)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        initial, _ = loss_fn(model(degraded.lr_input), degraded.stage_targets, degraded.rec_targets)
    for _ in range(steps):
        loss, _ = loss_fn(model(degraded.lr_input), degraded.stage_targets, degraded.rec_targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        final, _ = loss_fn(model(degraded.lr_input), degraded.stage_targets, degraded.rec_targets)
    return initial.item(), final.item()


@pytest.mark.parametrize(
    "make,supervise",
    [
        (lambda: ICONet(scale=2, width=16, blocks_per_stage=1, num_heads=2), "all_stages"),
        (lambda: ICONet(scale=4, width=16, blocks_per_stage=1, num_heads=2), "all_stages"),
        (lambda: UnetSR(scale=2, chans=8, num_pool_layers=2), "all_stages"),
        (lambda: T2NetLike(scale=2, width=16, num_blocks=2, num_transfers=2), "last_stage"),
    ],
    ids=["iconet_x2", "iconet_x4", "unet_sr", "t2net_like"],
)
def test_overfit_one_slice(make, supervise: str) -> None:
    torch.manual_seed(0)
    initial, final = overfit(make(), MultiStageLoss(supervise=supervise))
    assert final < initial / 10, (initial, final)


# ------------------------------------------------------------------------ determinism, checkpoint


def test_deterministic_under_fixed_seed() -> None:
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = small_iconet(scale=4, in_chans=2, data_consistency="soft")
        degraded = degrade(4, (6, 7))
        outputs.append(run_model(model, degraded, 2))
    assert torch.equal(outputs[0].sr, outputs[1].sr)
    assert all(torch.equal(a, b) for a, b in zip(outputs[0].rec_stages, outputs[1].rec_stages))


@pytest.mark.parametrize("block", ["rscfl", "resblock"])
def test_checkpointing_matches_plain(block: str) -> None:
    torch.manual_seed(0)
    plain = small_iconet(scale=4, block=block, blocks_per_stage=2).train()
    ckpt = small_iconet(scale=4, block=block, blocks_per_stage=2, checkpoint_blocks=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.checkpoint_blocks and not plain.checkpoint_blocks
    degraded = degrade(4, (6, 7))
    results = []
    for model in (plain, ckpt):
        out = model(degraded.lr_input)
        loss, _ = MultiStageLoss()(out, degraded.stage_targets, degraded.rec_targets)
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a.sr, out_b.sr, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("scale", [2, 4])
def test_no_graph_breaks_magnitude(scale: int) -> None:
    torch._dynamo.reset()
    try:
        model = small_iconet(scale=scale)
        explanation = torch._dynamo.explain(model)(torch.rand(2, 1, 12, 16))
        assert explanation.graph_break_count == 0, explanation.break_reasons
    finally:
        torch._dynamo.reset()


def test_complex_hard_dc_compiles_and_matches_eager() -> None:
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        model = small_iconet(scale=4, in_chans=2, data_consistency="hard").eval()
        degraded = degrade(4, (6, 8))
        x = model_input(degraded, 2)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        with torch.no_grad():
            eager = model(x, degraded.lr_observed, degraded.mask)
            traced = compiled(x, degraded.lr_observed, degraded.mask)
        for a, b in zip(eager.sr_stages + eager.rec_stages, traced.sr_stages + traced.rec_stages):
            assert torch.allclose(a, b, atol=1e-5)
    finally:
        torch._dynamo.reset()


# --------------------------------------------------------------------------- cost, precision


def count_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def test_rscfl_cost_is_linear_in_pixels() -> None:
    block = RSCFL(16, num_heads=2)
    small = count_flops(block, torch.rand(1, 16, 16, 16))
    large = count_flops(block, torch.rand(1, 16, 16, 32))
    assert 1.8 <= large / small <= 2.3


@pytest.mark.parametrize(
    "in_chans,data_consistency", [(1, "none"), (2, "hard")], ids=["magnitude", "complex_dc"]
)
def test_bf16_autocast_close_to_fp32(in_chans: int, data_consistency: str) -> None:
    torch.manual_seed(0)
    model = small_iconet(
        scale=4, in_chans=in_chans, data_consistency=data_consistency, width=16
    )
    degraded = degrade(4, (6, 8))
    x = model_input(degraded, in_chans)
    with torch.no_grad():
        ref = model(x, degraded.lr_observed, degraded.mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, degraded.lr_observed, degraded.mask)
    assert torch.isfinite(low.sr).all()
    assert all(torch.isfinite(r).all() for r in low.rec_stages)
    err = (low.sr.float() - ref.sr).abs().max() / ref.sr.abs().max()
    assert err < 0.05


def test_fp32_islands_under_autocast() -> None:
    norm = LayerNorm2d(4)
    x = torch.randn(1, 4, 3, 3).to(torch.bfloat16)
    expected = F.layer_norm(x.float().permute(0, 2, 3, 1), (4,), eps=1e-6).permute(0, 3, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), expected, atol=2e-2)


# --------------------------------------------------------------------------- ablation switches


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def seeded(**kwargs: object) -> ICONet:
    torch.manual_seed(0)
    return small_iconet(scale=4, **kwargs)


def test_ablation_switches_change_the_model() -> None:
    x = torch.rand(1, 1, 6, 7)
    base = seeded()
    counts = {
        "adaptive": n_params(base),
        "concat": n_params(seeded(fusion="concat")),
        "none": n_params(seeded(fusion="none")),
    }
    assert len(set(counts.values())) == 3, counts
    assert n_params(seeded(block="resblock")) != n_params(base)
    no_rec = seeded(use_rec_branch=False)
    assert n_params(no_rec) < counts["none"]
    assert no_rec(x).rec_stages == []
    # fusion=none vs the same weights with a fusion added: the exchange changes the output
    with torch.no_grad():
        assert not torch.allclose(seeded(fusion="none")(x).sr, seeded(fusion="concat")(x).sr)


def test_dc_switch_changes_the_output() -> None:
    degraded = degrade(4, (6, 7))
    outputs = {}
    for dc in ("none", "hard", "soft"):
        model = seeded(in_chans=2, data_consistency=dc)
        with torch.no_grad():
            outputs[dc] = run_model(model, degraded, 2).sr
    assert not torch.allclose(outputs["none"], outputs["hard"])
    assert not torch.allclose(outputs["hard"], outputs["soft"])


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_equals_interpolate(scale: int) -> None:
    x = torch.rand(2, 1, 13, 17)
    expected = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    model = BicubicSR(scale)
    assert n_params(model) == 0
    assert torch.equal(model(x).sr, expected)


@pytest.mark.parametrize("lr_shape", [(12, 16), (13, 17)])
def test_sinc_matches_sinc_upsample(lr_shape: Tuple[int, int]) -> None:
    z = torch.randn(2, 1, *lr_shape, dtype=torch.complex64)
    hr = (2 * lr_shape[0], 2 * lr_shape[1])
    out = SincSR(2, in_chans=2)(torch.cat([z.real, z.imag], dim=1)).sr
    expected = sinc_upsample(z, hr)
    assert torch.allclose(out[:, 0:1], expected.real, atol=1e-6)
    assert torch.allclose(out[:, 1:2], expected.imag, atol=1e-6)
    magnitude = torch.rand(2, 1, *lr_shape)
    assert torch.allclose(SincSR(2)(magnitude).sr, sinc_upsample(magnitude, hr).abs(), atol=1e-6)


@pytest.mark.parametrize("model", [BicubicSR(4), SincSR(4)], ids=["bicubic", "sinc"])
def test_flat_image_stays_flat(model: torch.nn.Module) -> None:
    flat = torch.full((1, 1, 13, 17), 2.5)
    assert torch.allclose(model(flat).sr, torch.full((1, 1, 52, 68), 2.5), atol=1e-5)


def test_flat_complex_image_stays_flat_under_sinc() -> None:
    flat = torch.cat([torch.full((1, 1, 7, 9), 1.5), torch.full((1, 1, 7, 9), -0.5)], dim=1)
    out = SincSR(2, in_chans=2)(flat).sr
    assert torch.allclose(out, F.interpolate(flat, scale_factor=2, mode="nearest"), atol=1e-5)


def test_unet_sr_handles_sizes_below_pool_depth() -> None:
    # 5 pixels pool to zero after 3 pools; the model pads internally
    out = UnetSR(2, chans=4, num_pool_layers=4)(torch.rand(1, 1, 5, 9))
    assert out.sr.shape == (1, 1, 10, 18)


# --------------------------------------------------------------------------- errors


def test_dc_in_magnitude_mode_is_an_error() -> None:
    for mode in ("hard", "soft"):
        with pytest.raises(ValueError, match="data_consistency"):
            small_iconet(data_consistency=mode)
    with pytest.raises(ValueError, match="use_rec_branch"):
        small_iconet(in_chans=2, data_consistency="hard", use_rec_branch=False)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"adaptive.*concat.*none"):
        small_iconet(fusion="attention")
    with pytest.raises(ValueError, match=r"rscfl.*resblock"):
        small_iconet(block="swin")
    with pytest.raises(ValueError, match=r"none.*hard.*soft"):
        small_iconet(in_chans=2, data_consistency="approximate")
    with pytest.raises(ValueError, match="scale"):
        small_iconet(scale=3)
    with pytest.raises(ValueError, match="num_heads"):
        small_iconet(width=10, num_heads=4)


def test_wrong_input_channels_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        small_iconet(in_chans=2)(torch.rand(1, 1, 6, 6))


@pytest.mark.parametrize("scale", [2, 4])
def test_dc_at_the_sr_output_changes_only_measured_frequencies(scale: int) -> None:
    """data_consistency_sr: the HR output's LR-truncated k-space equals the measurements where the
    mask is 1; frequencies outside the LR block (the SR branch's) are those of the same model without it."""
    torch.manual_seed(0)
    hr = (32, 48)
    lr = (hr[0] // scale, hr[1] // scale)
    deg = Acquisition(scale)(torch.randn(2, 1, *hr, dtype=torch.complex64),
                                   (torch.rand(2, 1, *lr) > 0.5).float())
    x = torch.cat([deg.lr_input_complex.real, deg.lr_input_complex.imag], dim=1)
    kwargs = dict(scale=scale, in_chans=2, width=8, blocks_per_stage=1)
    plain = ICONet(**kwargs).eval()
    dc = ICONet(**kwargs, data_consistency_sr="hard").eval()
    dc.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a = channels_to_complex(plain(x, deg.lr_observed, deg.mask).sr)
        b = channels_to_complex(dc(x, deg.lr_observed, deg.mask).sr)
    kb, ka = fft2c(b), fft2c(a)
    sampled = deg.mask.bool().expand(2, 1, *lr)
    lr_b = crop_kspace(kb, lr)
    assert torch.allclose(lr_b[sampled], deg.lr_observed[sampled], atol=1e-5)
    assert torch.allclose(lr_b[~sampled], crop_kspace(ka, lr)[~sampled], atol=1e-5)
    outside = torch.ones(hr, dtype=torch.bool)
    r0, c0 = hr[0] // 2 - lr[0] // 2, hr[1] // 2 - lr[1] // 2
    outside[r0 : r0 + lr[0], c0 : c0 + lr[1]] = False
    assert torch.allclose(kb[..., outside], ka[..., outside], atol=1e-5)
    soft = ICONet(**kwargs, data_consistency_sr="soft")
    assert soft.uses_kspace and soft.dc_sr_lambda_raw.requires_grad
    with pytest.raises(ValueError, match="data_consistency_sr='hard' needs complex mode"):
        ICONet(scale=scale, in_chans=1, data_consistency_sr="hard")


def _small(name: str, in_chans: int):
    if name == "ICONet":
        return ICONet(scale=2, in_chans=in_chans, width=8, blocks_per_stage=1)
    if name == "UnetSR":
        return UnetSR(scale=2, in_chans=in_chans, chans=4, num_pool_layers=1)
    return T2NetLike(scale=2, in_chans=in_chans, width=8, num_blocks=1, num_transfers=1)


@pytest.mark.parametrize("name", ["ICONet", "UnetSR", "T2NetLike"])
def test_magnitude_outputs_are_nonnegative_by_construction(name: str) -> None:
    """Issue 22, item 2: every returned magnitude stage is >= 0, in training too, with a gradient."""
    torch.manual_seed(0)
    model = _small(name, 1)
    with torch.no_grad():  # random weights large enough that the raw network goes negative
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    raw = model.run(x / per_slice_scale(x), None, None)
    assert any(bool((t < 0).any()) for t in [raw.sr, *raw.sr_stages, *raw.rec_stages]), "the test needs negatives"
    out = model(x)
    for t in [out.sr, *out.sr_stages, *out.rec_stages]:
        assert bool((t >= 0).all())
    assert out.sr is out.sr_stages[-1]
    out.sr.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_complex_outputs_and_the_bicubic_baseline_are_not_clamped() -> None:
    torch.manual_seed(0)
    out = _small("UnetSR", 2)(torch.randn(2, 2, 16, 16))
    assert bool((out.sr < 0).any())  # real/imag channels: signed by nature
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3:5, 3:5] = 1.0
    assert bool((BicubicSR(2)(x).sr < 0).any())  # bicubic overshoot: the literal baseline


def test_the_clamp_is_exact_forward_and_straight_through_backward() -> None:
    """max(x, 0) exactly in the forward pass; the identity's gradient, so a negative pixel is still pulled up."""
    from iconet_fastmri.models.common import clamp_straight_through

    x = torch.tensor([-3.0, -1e-30, 0.0, 2.5], requires_grad=True)
    y = clamp_straight_through(x)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 2.5]))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))
