"""Coil maps and the SENSE operator (issue 12, parts 1-2) against hand computations and known maps."""

import numpy as np
import pytest
import torch

from helpers.adjoint import assert_adjoint
from iconet_fastmri.demo import coil_sensitivities, make_phantom_volume
from iconet_fastmri.physics.fft import fft2c, ifft2c
from iconet_fastmri.physics.masks import create_mask
from iconet_fastmri.physics.operators import crop_kspace, rss
from iconet_fastmri.physics.sense import (
    SenseOperator,
    calibration_region,
    espirit_maps,
    espirit_maps_cached,
    estimate_maps_rss,
    sense_combine,
)


def _randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("hr,scale", [((32, 48), 2), ((30, 42), 2), ((32, 48), 4), ((36, 60), 4), ((16, 24), 1)])
def test_sense_operator_is_adjoint(coils, hr, scale):
    lr = (hr[0] // scale, hr[1] // scale)
    maps = None if coils == 1 else _randn(2, coils, *hr, seed=1)
    mask = (torch.rand(2, 1, *lr, generator=torch.Generator().manual_seed(2)) > 0.4).float()
    op = SenseOperator(maps, mask, lr_shape=lr, image_shape=hr)
    x, y = _randn(2, 1, *hr, seed=3), _randn(2, coils, *lr, seed=4)
    assert_adjoint(op, op.adjoint, x, y, rtol=1e-6)  # float32 rounding of the sums
    # In double precision (complex128 images and maps) to rounding of the order 1e-16.
    op64 = SenseOperator(None if maps is None else maps.to(torch.complex128), mask, lr_shape=lr, image_shape=hr)
    assert_adjoint(op64, op64.adjoint, x.to(torch.complex128), y.to(torch.complex128), rtol=1e-12)
    # Single coil: A is the degradation's own chain M F T, nothing more.
    if coils == 1:
        assert torch.allclose(op(x), crop_kspace(fft2c(x), lr) * mask, atol=1e-6)


@pytest.fixture(scope="module")
def phantom():
    """A brain-like phantom on a 64x64 grid under 8 birdcage coils (the demo's true maps)."""
    image, _ = make_phantom_volume(1, recon_size=(64, 64), kspace_width=64, anatomy="brain", seed=3)
    image = image[0, 32:96, :]  # the 64x64 centre of the oversampled readout
    maps = coil_sensitivities(8, image.shape)
    return torch.from_numpy(image.copy())[None, None], torch.from_numpy(maps.copy())[None]


def _projector_error(est, true, support):
    """Phase-free map error: ||S Sᴴ - Ŝ Ŝᴴ|| / ||S Sᴴ|| per pixel, over the support."""
    p_true = true[:, :, None] * true[:, None].conj()
    p_est = est[:, :, None] * est[:, None].conj()
    diff = (p_est - p_true).abs().pow(2).sum(dim=(1, 2))[0]
    ref = p_true.abs().pow(2).sum(dim=(1, 2))[0]
    return float((diff[support].sum() / ref[support].sum()).sqrt())


def test_rss_estimate_agrees_with_the_true_maps_and_is_normalised(phantom):
    image, maps = phantom
    kspace = fft2c(maps * image)
    mask, _ = create_mask("random", center_fractions=[0.16], accelerations=[4], seed=0)((64, 64), seed=0)
    mask = mask[None, None]
    est = estimate_maps_rss(kspace * mask, mask)
    support = image[0, 0].abs() > 0.1 * image.abs().max()
    err = _projector_error(est, maps, support)
    assert err < 0.15, err  # low-resolution maps from 10 calibration lines; measured 0.06
    power = est.abs().pow(2).sum(dim=1)[0]
    assert torch.allclose(power[power > 0], torch.ones_like(power[power > 0]), atol=1e-5)
    # The calibration region of a 1D mask: every row of the contiguous sampled columns around the centre.
    cols = mask[0, 0, 0] > 0
    lo = hi = 32
    while cols[lo - 1]:
        lo -= 1
    while cols[hi + 1]:
        hi += 1
    expected = torch.zeros(64, 64)
    expected[:, lo : hi + 1] = 1
    assert torch.equal(calibration_region(mask)[0, 0], expected) and hi - lo + 1 >= 10


def test_espirit_maps_agree_with_the_true_maps(phantom, tmp_path):
    image, maps = phantom
    kspace = fft2c(maps * image)[0].numpy()
    est = torch.from_numpy(espirit_maps(kspace, calib_width=16))[None]
    support = image[0, 0].abs() > 0.1 * image.abs().max()
    err = _projector_error(est, maps, support)
    assert err < 0.1, err
    cached = espirit_maps_cached(kspace, 16, tmp_path)
    assert np.array_equal(cached, espirit_maps_cached(kspace, 16, tmp_path))  # second call: from the cache
    assert len(list(tmp_path.glob("espirit_*.npy"))) == 1


@pytest.mark.parametrize("anatomy,seed", [("brain", 3), ("knee", 1), ("brain", 7)])
def test_espirit_refuses_a_calibration_region_too_small_for_its_kernel(anatomy, seed):
    """Issue 24: 10 calibration lines gave maps vanishing over the object (Σ|S|² = 0, error 0.87) silently.

    Now 10 and 12 lines (both with holes in the true object, measured: 95-99 % and 1-2 %) are refused,
    naming the numbers; 14 and more (no holes, projector error <= 0.03) are accepted."""
    image, _ = make_phantom_volume(1, recon_size=(64, 64), kspace_width=64, anatomy=anatomy, seed=seed)
    image = torch.from_numpy(image[0, 32:96, :].copy())[None, None]
    maps = torch.from_numpy(coil_sensitivities(8, image.shape[-2:]).copy())[None]
    kspace = fft2c(maps * image)[0].numpy()
    support = image[0, 0].abs() > 0.1 * image.abs().max()
    for calib in (10, 12, 14, 19):
        lines = np.zeros(64, dtype=np.float32)
        lines[32 - calib // 2: 32 - calib // 2 + calib] = 1  # only the centre columns acquired
        if calib <= 12:
            with pytest.raises(ValueError, match=rf"slice 3: ESPIRiT .*{calib}"):
                espirit_maps(kspace * lines, calib, where="slice 3")
        else:
            est = torch.from_numpy(espirit_maps(kspace * lines, calib, where="slice 3"))[None]
            assert float((est.abs() ** 2).sum(1)[0][support].min()) > 0.5
            assert _projector_error(est, maps, support) < 0.05


def test_sense_combined_image_equals_the_rss_target(phantom):
    image, maps = phantom
    coil_images = maps * image
    target = rss(coil_images)  # the HR target of multi-coil data
    full = torch.ones(1, 1, 64, 64)
    exact = estimate_maps_rss(fft2c(coil_images), full)  # maps from the fully sampled data
    assert torch.allclose(sense_combine(coil_images, exact).abs(), target, rtol=1e-5, atol=1e-7)
    mask, _ = create_mask("random", center_fractions=[0.16], accelerations=[4], seed=0)((64, 64), seed=0)
    low_res = estimate_maps_rss(fft2c(coil_images) * mask, mask[None, None])
    support = image[0, 0].abs() > 0.1 * image.abs().max()
    combined = sense_combine(coil_images, low_res).abs()[0, 0]
    rel = float((combined - target[0, 0])[support].norm() / target[0, 0][support].norm())
    assert rel < 0.05, rel
    # Aᴴ of fully sampled k-space is the SENSE-combined image.
    op = SenseOperator(exact, full)
    assert torch.allclose(op.adjoint(fft2c(coil_images)), sense_combine(coil_images, exact), atol=1e-6)
    assert torch.allclose(ifft2c(op(image)), exact * image, atol=1e-6)


@pytest.mark.slow
def test_complex_mode_on_multicoil_data_feeds_the_sense_combined_image(tmp_path):
    """mode: complex works for multi-coil data; the metric compares |output| with the RSS target."""
    import pytorch_lightning as pl

    from iconet_fastmri.demo import write_fastmri_dataset
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.physics.acquisition import Acquisition
    from iconet_fastmri.pl_modules import IconetDataModule, IconetModule

    for split, first in (("train", 0), ("val", 5)):
        write_fastmri_dataset(tmp_path / f"multicoil_{split}", "multicoil", 2, 2, (32, 32), num_coils=4,
                              seed=first, first_index=first)
    module = IconetModule(ICONet(scale=2, in_chans=2, width=4, blocks_per_stage=1), mode="complex")
    # Fully sampled LR k-space: the SENSE-combined input's magnitude is the RSS LR image.
    images = _randn(2, 4, 32, 32, seed=9)
    deg = Acquisition(2)(images, torch.ones(2, 1, 16, 16))
    x = module.model_input(deg).image
    assert x.shape == (2, 2, 16, 16)
    assert torch.allclose(x.pow(2).sum(1, keepdim=True).sqrt(), deg.lr_clean, rtol=1e-4, atol=1e-6)
    dm = IconetDataModule(data_path=str(tmp_path), challenge="multicoil", scale=2, hr_crop=(32, 32),
                          batch_size=2, num_workers=0, use_dataset_cache=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    assert np.isfinite(float(trainer.callback_metrics["val/psnr"]))
    dc = IconetModule(ICONet(scale=2, in_chans=2, width=4, blocks_per_stage=1, data_consistency="hard"),
                      mode="complex")
    # A mask without a fully sampled centre cannot give coil maps: refused at setup, before any step.
    blank = np.ones((16, 16), np.float32)
    blank[:, 6:10] = 0
    np.save(tmp_path / "no_centre.npy", blank)
    from iconet_fastmri.physics.masks import MaskConfig

    no_centre = IconetDataModule(data_path=str(tmp_path), challenge="multicoil", scale=2, hr_crop=(32, 32),
                                 batch_size=2, num_workers=0, use_dataset_cache=False,
                                 mask=MaskConfig(name="file", path=str(tmp_path / "no_centre.npy")))
    with pytest.raises(ValueError, match="needs coil maps: mask 'file'.*does not sample the k-space centre"):
        pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, use_distributed_sampler=False).fit(module, datamodule=no_centre)
    # Multi-coil data consistency (issue 12): trains, through the estimated maps.
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(dc, datamodule=dm)
    assert np.isfinite(float(trainer.callback_metrics["val/psnr"]))
    kwargs = dc.model_input(deg).dc
    assert set(kwargs) == {"measured_kspace", "mask", "maps"} and kwargs["maps"].shape == (2, 4, 16, 16)


# ----------------------------------------------------------------- data consistency through A (issue 12)


@pytest.mark.parametrize("grid", [(16, 20), (32, 40), (33, 41)])
def test_sense_dc_single_coil_is_the_plain_dc(grid):
    from helpers.reference_dc import data_consistency
    from iconet_fastmri.physics.sense import sense_data_consistency

    x = _randn(2, 1, *grid, seed=1)
    mask = (torch.rand(1, 1, 1, 20, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    y = _randn(2, 1, 16, 20, seed=3) * mask
    for lam in (None, torch.tensor(0.7)):
        torch.testing.assert_close(sense_data_consistency(x, y, mask, None, lam), data_consistency(x, y, mask, lam),
                                   rtol=1e-5, atol=1e-5)


def _unit_maps(b, c, h, w, seed):
    maps = _randn(b, c, h, w, seed=seed)
    return maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()


@pytest.mark.parametrize("grid", [(16, 20), (32, 40)])
def test_sense_dc_multicoil_keeps_a_consistent_image_and_moves_others_towards_the_data(grid):
    from iconet_fastmri.physics.sense import SenseOperator, maps_on_grid, sense_data_consistency

    maps = _unit_maps(2, 5, 16, 20, seed=4)
    fine = maps_on_grid(maps, grid)
    assert torch.allclose(fine.abs().pow(2).sum(1), torch.ones(2, *grid), atol=1e-5)
    mask = (torch.rand(1, 1, 1, 20, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    op = SenseOperator(fine, mask, lr_shape=(16, 20))
    truth = _randn(2, 1, *grid, seed=6)
    y = op(truth)
    torch.testing.assert_close(sense_data_consistency(truth, y, mask, maps), truth, rtol=1e-5, atol=1e-5)
    guess = truth + 0.5 * _randn(2, 1, *grid, seed=7)
    hard = sense_data_consistency(guess, y, mask, maps)
    soft = sense_data_consistency(guess, y, mask, maps, torch.tensor(1.0))
    residual = lambda z: float((op(z) - y).norm())  # noqa: E731
    assert residual(hard) < 0.7 * residual(guess)
    assert residual(hard) < residual(soft) < residual(guess)
    # Hard DC of the coil images: each coil's k-space equals the measurement where the mask is 1
    # (single-coil view of every coil; the combination then projects through Sᴴ).
    for c in range(5):
        coil = fine[:, c : c + 1] * guess
        fixed = sense_data_consistency(coil, y[:, c : c + 1], mask)
        torch.testing.assert_close(SenseOperator(None, mask, lr_shape=(16, 20), image_shape=grid)(fixed),
                                   y[:, c : c + 1], rtol=1e-4, atol=1e-4)


def test_iconet_multicoil_dc_needs_maps_and_uses_them():
    from iconet_fastmri.models import ICONet

    net = ICONet(scale=2, in_chans=2, width=4, blocks_per_stage=1, data_consistency="hard",
                 data_consistency_sr="soft").eval()
    x = torch.randn(1, 2, 8, 8)
    measured = _randn(1, 3, 8, 8, seed=8)
    mask = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="3 coils: multi-coil data consistency needs the coil sensitivity maps"):
        net(x, measured, mask)
    maps = _unit_maps(1, 3, 8, 8, seed=9)
    with pytest.raises(ValueError, match="maps must be complex"):
        net(x, measured, mask, maps[:, :2])
    out = net(x, measured, mask, maps)
    other = net(x, measured, mask, _unit_maps(1, 3, 8, 8, seed=10))
    assert out.sr.shape == (1, 2, 16, 16) and not torch.allclose(out.sr, other.sr)


# ----------------------------------------------------------------- learned map refinement (issue 12, part 1)


def _multicoil_kspace(coils=4, seed=11):
    from iconet_fastmri.physics.fft import fft2c

    images = _randn(2, coils, 16, 16, seed=seed)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 6:10] = 1
    mask[..., ::3] = 1
    return fft2c(images) * mask, mask


def test_learned_maps_start_at_the_rss_estimate_and_skip_zero_padded_coils():
    from iconet_fastmri.models.coil_maps import LearnedMaps
    from iconet_fastmri.physics.sense import estimate_maps_rss

    kspace, mask = _multicoil_kspace()
    kspace[1, 3] = 0  # slice 1 came from a 3-coil volume, zero-padded to 4
    net = LearnedMaps(chans=4, num_pools=2)
    maps = net(kspace, mask)
    torch.testing.assert_close(maps, estimate_maps_rss(kspace, mask), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        net.gate.fill_(0.5)
    moved = net(kspace, mask)
    assert torch.isfinite(torch.view_as_real(moved)).all() and not torch.allclose(moved, maps)
    assert float(moved[1, 3].detach().abs().max()) == 0.0
    inside = moved.abs().pow(2).sum(1) > 0
    torch.testing.assert_close(moved.abs().pow(2).sum(1)[inside], torch.ones(int(inside.sum())), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_learned_maps_train_end_to_end_and_round_trip_through_a_checkpoint(tmp_path, singlecoil_dir):
    import pytorch_lightning as pl

    from iconet_fastmri.demo import write_fastmri_dataset

    from iconet_fastmri.inference import load_method
    from iconet_fastmri.models import ICONet
    from iconet_fastmri.pl_modules import IconetDataModule, IconetModule

    with pytest.raises(ValueError, match="coil_maps='learned' serves complex"):
        IconetModule(ICONet(scale=2, width=4, blocks_per_stage=1), coil_maps="learned")
    for split, first in (("train", 0), ("val", 5)):
        write_fastmri_dataset(tmp_path / f"multicoil_{split}", "multicoil", 2, 2, (32, 32), num_coils=4,
                              seed=first, first_index=first)
    module = IconetModule(ICONet(scale=2, in_chans=2, width=4, blocks_per_stage=1, data_consistency="hard"),
                          mode="complex", coil_maps="learned", map_chans=4, map_pools=2)
    dm = IconetDataModule(data_path=str(tmp_path), challenge="multicoil", scale=2, hr_crop=(32, 32),
                          batch_size=2, num_workers=0, use_dataset_cache=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert float(module.map_net.gate.detach().abs()) > 0  # the refinement got gradients and moved
    ckpt = tmp_path / "maps.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded, _, _ = load_method(ckpt)
    kspace, mask = _multicoil_kspace()
    with torch.no_grad():
        torch.testing.assert_close(loaded.map_net(kspace, mask), module.map_net(kspace, mask))
    single = IconetModule(ICONet(scale=2, in_chans=2, width=4, blocks_per_stage=1), mode="complex",
                          coil_maps="learned", map_chans=4, map_pools=2)
    sc = IconetDataModule(data_path=str(tmp_path), challenge="singlecoil", scale=2, hr_crop=(32, 32), batch_size=2,
                          num_workers=0, use_dataset_cache=False, train_path=str(singlecoil_dir),
                          val_path=str(singlecoil_dir))
    with pytest.raises(ValueError, match="needs multicoil data"):
        pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                   use_distributed_sampler=False, default_root_dir=tmp_path).fit(single, datamodule=sc)


# ----------------------------------------------------------------- phase-aware loss (issue 12, why DC lost SSIM)


def test_complex_targets_match_the_degradation_and_the_rss_targets():
    from iconet_fastmri.physics.acquisition import Acquisition
    from iconet_fastmri.physics.sense import complex_targets, estimate_maps_rss

    single = _randn(2, 1, 32, 32, seed=12)
    deg = Acquisition(4)(single, torch.ones(2, 1, 8, 8))
    lr, mid, hr = complex_targets(single, [(8, 8), (16, 16), (32, 32)])
    torch.testing.assert_close(lr, deg.lr_clean_complex, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mid.abs(), deg.stage_targets[0], rtol=1e-4, atol=1e-5)
    assert hr is single
    coils = _randn(2, 4, 32, 32, seed=13)
    deg = Acquisition(2)(coils, torch.ones(2, 1, 16, 16))
    maps = estimate_maps_rss(deg.lr_observed, deg.mask)  # fully sampled: maps explain the coil images
    lr, = complex_targets(coils, [(16, 16)], maps)
    torch.testing.assert_close(lr.abs(), deg.lr_clean, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="need coil maps"):
        complex_targets(coils, [(16, 16)])


def test_phase_loss_supervises_the_phase_the_magnitude_loss_ignores(tiny_multicoil_root):
    import pytorch_lightning as pl

    from iconet_fastmri.models import ICONet
    from iconet_fastmri.pl_modules import IconetDataModule, IconetModule

    with pytest.raises(ValueError, match="set mode: complex"):
        IconetModule(ICONet(scale=2, width=4, blocks_per_stage=1), lambda_phase=0.1)
    module = IconetModule(ICONet(scale=2, in_chans=2, width=4, blocks_per_stage=1, data_consistency_sr="hard"),
                          mode="complex", lambda_phase=0.5)
    dm = IconetDataModule(data_path=str(tiny_multicoil_root), challenge="multicoil", scale=2, hr_crop=(32, 32),
                          batch_size=2, num_workers=0, use_dataset_cache=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    from iconet_fastmri.losses import complex_stage_targets
    from iconet_fastmri.models import SROutput

    inputs = module.model_input(module.degrade(batch))
    out = module(inputs)
    assert inputs.maps is not None  # the maps travel with the input, not on the module
    sr_t, rec_t = complex_stage_targets(batch.hr_images, out, inputs.maps)
    assert [t.shape[1] for t in sr_t + rec_t] == [2] * (len(sr_t) + len(rec_t))
    as_output = lambda sr, rec: SROutput(sr=sr[-1], sr_stages=sr, rec_stages=rec)  # noqa: E731
    exact, _ = module.loss_fn(as_output(sr_t, rec_t), sr_t, rec_t)
    rotated = [torch.cat([-t[:, 1:], t[:, :1]], dim=1) for t in sr_t]  # times i: same magnitude
    turned, _ = module.loss_fn(as_output(rotated, rec_t), sr_t, rec_t)
    magnitude_only, _ = module.loss_fn(as_output(rotated, []),
                                       [t.pow(2).sum(1, keepdim=True).sqrt() for t in sr_t], [])
    size = float(torch.cat([t.flatten() for t in sr_t]).abs().mean())
    assert float(exact) == 0.0 and float(turned) > 0.3 * size and float(magnitude_only) < 0.05 * float(turned)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=1,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    assert np.isfinite(float(trainer.callback_metrics["val/psnr"]))


@pytest.fixture
def tiny_multicoil_root(tmp_path):
    from iconet_fastmri.demo import write_fastmri_dataset

    for split, first in (("train", 0), ("val", 5)):
        write_fastmri_dataset(tmp_path / f"multicoil_{split}", "multicoil", 2, 2, (32, 32), num_coils=4,
                              seed=first, first_index=first)
    return tmp_path


def test_espirit_does_not_refuse_a_slice_of_noise_alone():
    """Review: a volume's edge slice (noise only) has no object; its (empty) maps are not holes."""
    rng = np.random.default_rng(0)
    kspace = ((rng.standard_normal((8, 80, 80)) + 1j * rng.standard_normal((8, 80, 80))) * 1e-6).astype(np.complex64)
    maps = espirit_maps(kspace, 16, where="edge slice")
    assert maps.shape == kspace.shape
