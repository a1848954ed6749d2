"""Lightning module, data module and the real CLI entry point on tiny generated data."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.physics.masks import MaskConfig
from iconet_fastmri.metrics import VolumeAccumulator, volume_metrics
from iconet_fastmri.pl_modules import IconetDataModule

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_iconet_fastmri.py"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """singlecoil_{train,val} and multicoil_{train,val}, 32x32 HR."""
    root = tmp_path_factory.mktemp("tiny")
    for challenge, coils in (("singlecoil", 1), ("multicoil", 3)):
        write_fastmri_dataset(root / f"{challenge}_train", challenge, num_volumes=2, slices=3,
                              recon_size=(32, 32), num_coils=coils, seed=10)
        write_fastmri_dataset(root / f"{challenge}_val", challenge, num_volumes=2, slices=2,
                              recon_size=(32, 32), num_coils=coils, seed=20, first_index=50)
    return root


def _cli(args, tmp, timeout=600, env=None):
    cmd = [sys.executable, str(SCRIPT)] + [str(a) for a in args]
    full_env = dict(os.environ, PYTHONHASHSEED="0", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp, env=full_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _common(data, run_dir, challenge="singlecoil", epochs=2):
    return [
        "--seed_everything", 0,
        "--trainer.accelerator", "cpu", "--trainer.devices", 1,
        "--trainer.max_epochs", epochs,
        "--trainer.default_root_dir", run_dir,
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", run_dir,
        "--trainer.log_every_n_steps", 1,
        "--trainer.enable_progress_bar", "false",
        "--trainer.num_sanity_val_steps", 0,
        "--model.model", "ICONet", "--model.model.init_args.width", 8,
        "--model.model.init_args.blocks_per_stage", 1, "--model.lr", 3e-3,
        "--data.data_path", data, "--data.challenge", challenge,
        "--data.scale", 2, "--data.hr_crop", "[32, 32]",
        "--data.batch_size", 2, "--data.num_workers", 0,
        "--data.use_dataset_cache", "false",
    ]


def _metrics(run_dir):
    rows = []
    for path in Path(run_dir).rglob("metrics.csv"):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
@pytest.mark.slow
def test_fit_two_epochs_through_cli(tiny_data, tmp_path, challenge):
    run = tmp_path / "run"
    proc = _cli(["fit"] + _common(tiny_data, run, challenge), tmp_path)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    names = [c.name for c in ckpts]
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    assert list(run.rglob("config.yaml")), "resolved config not saved"
    rows = _metrics(run)
    epoch_loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    # Two epochs of 3 steps, each with fresh random masks: the epoch loss is too noisy to show learning here
    # (tests/training/test_patch_training.py trains long enough to); it is logged and finite.
    assert len(epoch_loss) == 2 and all(np.isfinite(epoch_loss))
    val = [r for r in rows if r.get("val/psnr")]
    assert val and all(np.isfinite(float(r["val/psnr"])) for r in val)
    assert all(float(r["val/num_volumes"]) == 2 for r in val)
    assert "bicubic baseline" in proc.stderr + proc.stdout
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * 3  # 6 slices / batch 2 = 3 steps


@pytest.mark.slow
def test_resume_from_last_continues(tiny_data, tmp_path):
    run = tmp_path / "run"
    _cli(["fit"] + _common(tiny_data, run, epochs=1), tmp_path)
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert first["global_step"] == 3
    _cli(["fit"] + _common(tiny_data, run, epochs=2) + ["--ckpt_path", "last"], tmp_path)
    second = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert second["global_step"] == 6 and second["epoch"] == 1
    sched = second["lr_schedulers"][0]
    assert sched["last_epoch"] == 2  # the cosine schedule kept counting across the resume
    assert second["optimizer_states"][0]["state"], "optimizer state lost"


def test_validation_metrics_equal_fastmri_evaluate():
    from fastmri import evaluate

    rng = np.random.RandomState(0)
    target = rng.rand(3, 16, 16).astype(np.float32) * 5
    pred = target + 0.3 * rng.randn(3, 16, 16).astype(np.float32)
    ours = volume_metrics(target, pred)
    assert ours["nmse"] == pytest.approx(float(evaluate.nmse(target, pred)), rel=1e-12)
    assert ours["psnr"] == pytest.approx(float(evaluate.psnr(target, pred)), rel=1e-12)
    assert ours["ssim"] == pytest.approx(evaluate.ssim(target, pred).item(), rel=1e-12)
    acc = VolumeAccumulator({"a.h5": 3})
    for i in (2, 0, 1):  # any order
        acc.add("a.h5", i, target[i], {"": pred[i]})
    assert "a.h5" in acc.results  # scored as soon as complete
    assert acc.finalize()["a.h5"]["psnr"] == pytest.approx(ours["psnr"], rel=1e-6)


def test_validation_masks_identical_across_runs_and_workers(tiny_data):
    def masks(workers):
        dm = IconetDataModule(
            data_path=str(tiny_data), challenge="singlecoil", scale=2, hr_crop=(32, 32),
            mask=MaskConfig(name="random", accelerations=[4]), batch_size=1, num_workers=workers,
            use_dataset_cache=False,
        )
        dm.setup("validate")
        return [(b.fname[0], int(b.slice_num[0]), b.mask[0]) for b in dm.val_dataloader()]

    runs = [masks(0), masks(0), masks(1), masks(2)]
    for other in runs[1:]:
        assert [(f, s) for f, s, _ in other] == [(f, s) for f, s, _ in runs[0]]
        assert all(torch.equal(x[2], y[2]) for x, y in zip(runs[0], other))


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tiny_data, tmp_path):
    """gloo DDP on 2 CPU processes: same per-volume validation metrics, each volume once."""
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        run = tmp_path / f"run{devices}"
        out = tmp_path / f"volumes{devices}.json"
        args = ["validate"] + _common(tiny_data, run) + [
            "--trainer.devices", devices, "--trainer.strategy", strategy,
            "--volume_metrics.path", out,
        ]
        _cli(args, tmp_path, env={"OMP_NUM_THREADS": "1"})
        results[devices] = json.loads(out.read_text())
    one, two = results[1]["volumes"], results[2]["volumes"]
    assert sorted(one) == sorted(two) and len(one) == 2
    for fname in one:
        assert two[fname]["num_slices"] == one[fname]["num_slices"] == 2
        for key in ("psnr", "ssim", "nmse", "psnr_bicubic"):
            assert two[fname][key] == pytest.approx(one[fname][key], rel=1e-5, abs=1e-7)


def _tiny_module(**kw):
    from iconet_fastmri.pl_modules import IconetModule

    from iconet_fastmri.models import ICONet

    return IconetModule(ICONet(scale=2, width=8, blocks_per_stage=1), lr=1e-3, **kw)


def _tiny_dm(root, **kw):
    return IconetDataModule(data_path=str(root), scale=2, hr_crop=(32, 32), batch_size=2, num_workers=0,
                            use_dataset_cache=False, **kw)


@pytest.mark.slow
def test_bf16_mixed_training_keeps_ffts_in_fp32(tiny_data, tmp_path):
    import pytorch_lightning as pl

    from iconet_fastmri.physics.acquisition import Acquisition

    seen = []
    original = Acquisition.simulate

    def spy(self, hr_images, mask=None, compact=None):
        out = original(self, hr_images, mask, compact)
        seen.append((out.lr_input.dtype, out.lr_kspace.dtype, torch.is_autocast_enabled("cpu")))
        return out

    Acquisition.simulate = spy
    try:
        trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             default_root_dir=tmp_path, num_sanity_val_steps=0)
        module = _tiny_module()
        trainer.fit(module, datamodule=_tiny_dm(tiny_data))
    finally:
        Acquisition.simulate = original
    assert seen and all(d == torch.float32 and k == torch.complex64 for d, k, _ in seen)
    assert any(enabled for _, _, enabled in seen)  # it really ran under autocast
    assert np.isfinite(float(trainer.callback_metrics["val/psnr"]))


def test_image_panel_logged_to_tensorboard(tiny_data, tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from iconet_fastmri.reports import ValidationPanels

    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                         logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, callbacks=[ValidationPanels(num_images=1)])
    trainer.fit(_tiny_module(), datamodule=_tiny_dm(tiny_data))
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert tags == ["val/panel_0"], tags
    image = events.Images(tags[0])[0]
    assert image.width > 5 * 32 and image.height > 32  # a labelled figure, not a bare strip
    assert "val/psnr" in events.Tags()["scalars"] and "val/psnr_bicubic" in events.Tags()["scalars"]


def test_validation_panel_is_labelled_and_scales_the_error_to_itself():
    from iconet_fastmri.figures import validation_panel

    rng = np.random.default_rng(0)
    target = rng.random((32, 32)).astype(np.float32)
    sr = target + 0.01 * rng.standard_normal((32, 32)).astype(np.float32)
    rgb, titles = validation_panel(rng.random((16, 16)), rng.random((16, 16)), sr, target)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert titles[:4] == ["LR input", "reconstruction prior", "SR", "HR target"]
    emax = np.percentile(np.abs(sr - target), 99.5) / target.max()
    assert titles[4] == f"|SR - target|, 0-{emax:.1%} of max"
    _, no_prior = validation_panel(rng.random((16, 16)), None, sr, target)
    assert "reconstruction prior" not in no_prior and len(no_prior) == 4


def test_module_adds_no_normalisation_of_its_own():
    """The loss units come from the model: a model that does not normalise gets no scale invented for it."""
    from iconet_fastmri.models import BicubicSR, UnetSR
    from iconet_fastmri.physics.acquisition import Acquisition
    from iconet_fastmri.pl_modules import IconetModule

    deg = Acquisition(2)(torch.randn(2, 1, 16, 16, dtype=torch.complex64) * 1e-4)
    module = IconetModule(BicubicSR(2))
    plain = module(module.model_input(deg))
    assert plain.norm_scale is None
    assert torch.equal(plain.sr, torch.nn.functional.interpolate(deg.lr_input, scale_factor=2.0, mode="bicubic"))
    module = IconetModule(UnetSR(2, chans=4, num_pool_layers=1))
    normalised = module(module.model_input(deg))
    expected = deg.lr_input.mean(dim=(1, 2, 3), keepdim=True) + 1e-12  # per_slice_scale of a magnitude image
    assert torch.allclose(normalised.norm_scale, expected)
    with pytest.raises(TypeError, match="SRModel"):
        IconetModule(torch.nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="mode='complex' feeds 2 channel"):
        IconetModule(BicubicSR(2), mode="complex")


@pytest.mark.slow
def test_cli_injects_any_registered_model_and_links_the_acquisition(tmp_path):
    """--model.model picks the network; data.scale and model.mode reach its init args; --help lists them."""
    from iconet_fastmri.cli import IconetCLI
    from iconet_fastmri.models import UnetSR
    from iconet_fastmri.pl_modules import IconetModule

    cli = IconetCLI(
        IconetModule, IconetDataModule, run=False,
        args=["--config", str(ROOT / "configs" / "demo.yaml"), "--model.model", "UnetSR",
              "--model.model.init_args.chans", "8", "--data.scale", "4", "--model.mode", "complex",
              "--data.noise_std", "0.01", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.logger", "false"],
    )
    net = cli.model.model
    assert isinstance(net, UnetSR) and net.scale == 4 and net.in_chans == 2
    assert net.init_args["chans"] == 8 and net.init_args["num_pool_layers"] == 4
    assert cli.model.acquisition.noise_std == 0.01 and cli.model.acquisition is cli.datamodule.acquisition and cli.model.scale == 4
    assert cli.model.hparams["model"]["init_args"] == net.init_args  # what checkpoints store
    base = [sys.executable, str(SCRIPT), "fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    help_text = subprocess.run(base + ["--model.model.help", "ICONet"], capture_output=True, text=True,
                               env=env, timeout=120).stdout
    for arg in ("--model.model.width", "--model.model.fusion", "--model.model.data_consistency"):
        assert arg in help_text
    bad = subprocess.run(base + ["--model.model.init_args.widht", "8", "--print_config"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "widht" in bad.stderr


def test_cpu_threads_are_sized_to_the_cores_left_by_workers(monkeypatch):
    from jsonargparse import Namespace

    from iconet_fastmri.cli import size_cpu_threads

    import iconet_fastmri.cli as cli

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    config = Namespace(trainer=Namespace(accelerator="cpu"), data=Namespace(num_workers=1))
    monkeypatch.setattr(cli, "foreign_load", lambda start, min_window_s: 0.0)  # a quiet machine
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert size_cpu_threads(config) == max(1, cores - 1) == torch.get_num_threads()
        config.data.num_workers = 0
        assert size_cpu_threads(config) == cores
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert size_cpu_threads(config) == 1  # the user's choice wins
        assert size_cpu_threads(Namespace(trainer=Namespace(accelerator="gpu"), data=config.data)) is None
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_leave_the_cores_other_processes_use(monkeypatch):
    """Another busy process takes a core from torch, at start-up and after each epoch."""
    from jsonargparse import Namespace

    import iconet_fastmri.cli as cli
    import iconet_fastmri.machine_load as machine_load
    from iconet_fastmri.callbacks import CpuThreads

    assert cli.threads_for(2, 0, 0.0) == 2 and cli.threads_for(2, 0, 1.0) == 1 and cli.threads_for(2, 1, 1.0) == 1
    assert cli.threads_for(8, 1, 2.4) == 5 and cli.threads_for(2, 0, 0.4) == 2 and cli.threads_for(1, 0, 3.0) == 1
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = Namespace(trainer=Namespace(accelerator="cpu"), data=Namespace(num_workers=0))
    try:
        monkeypatch.setattr(cli, "foreign_load", lambda start, min_window_s: 1.0)
        assert cli.size_cpu_threads(config) == max(1, len(os.sched_getaffinity(0)) - 1)
        # The callback: one busy core in an epoch -> 1 thread of 2; quiet again -> 2.
        torch.set_num_threads(2)
        loads = iter([1.0, 0.1])
        monkeypatch.setattr(machine_load, "foreign_load", lambda start, min_window_s: next(loads))
        callback = CpuThreads(2)
        trainer = Namespace(current_epoch=0)
        callback.on_train_epoch_start(trainer, None)
        callback.on_train_epoch_end(trainer, None)
        assert torch.get_num_threads() == 1
        trainer.current_epoch = 1
        callback.on_train_epoch_start(trainer, None)
        callback.on_train_epoch_end(trainer, None)
        assert torch.get_num_threads() == 2 and callback.history == [(0, 1.0, 1), (1, 0.1, 2)]
    finally:
        torch.set_num_threads(before)


def test_cli_adds_the_cpu_thread_callback_only_without_workers(tiny_data, tmp_path, monkeypatch):
    from iconet_fastmri.callbacks import CpuThreads
    from iconet_fastmri.cli import IconetCLI
    from iconet_fastmri.pl_modules import IconetModule

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        found = {}
        for workers in (0, 1):
            cli = IconetCLI(IconetModule, IconetDataModule, run=False, args=[
                "--config", str(ROOT / "configs" / "demo.yaml"), "--data.demo", "false",
                "--data.data_path", str(tiny_data), "--data.hr_crop", "[32, 32]",
                "--data.num_workers", str(workers), "--trainer.default_root_dir", str(tmp_path / str(workers)),
                "--trainer.logger", "false"])
            found[workers] = any(isinstance(c, CpuThreads) for c in cli.trainer.callbacks)
        assert found == {0: True, 1: False}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_builds(config, tmp_path):
    """Each YAML in configs/ parses and instantiates (model, data module, trainer) without touching data."""
    from iconet_fastmri.cli import IconetCLI
    from iconet_fastmri.pl_modules import IconetModule

    cli = IconetCLI(IconetModule, IconetDataModule, run=False,
                    args=["--config", str(ROOT / "configs" / config), "--data.demo", "false",
                          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])
    assert cli.model.model.scale == cli.datamodule.scale
    assert cli.model.model.in_chans == (2 if cli.model.hparams.mode == "complex" else 1)
    if config == "knee_multicoil_x2.yaml":
        assert cli.datamodule.challenge == "multicoil" and cli.datamodule.anatomy == "knee"
        assert cli.model.uses_dc and cli.model.model.dc_mode == "soft" and cli.model.model.dc_sr_mode == "soft"


@pytest.mark.slow
def test_channels_last_trains_the_same_weights_and_saves_plain_checkpoints(tiny_data, tmp_path):
    """--model.channels_last: NHWC weights and input, the same numbers, loadable without the flag."""
    import pytorch_lightning as pl

    from iconet_fastmri.pl_modules import IconetModule

    results = {}
    for nhwc in (False, True):
        pl.seed_everything(0)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             default_root_dir=tmp_path, num_sanity_val_steps=0, deterministic=True)
        module = _tiny_module(channels_last=nhwc)
        trainer.fit(module, datamodule=_tiny_dm(tiny_data))
        conv = next(p for p in module.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == nhwc
        results[nhwc] = (module.state_dict(), float(trainer.callback_metrics["val/psnr"]))
    (plain, psnr_plain), (nhwc_state, psnr_nhwc) = results[False], results[True]
    assert abs(psnr_plain - psnr_nhwc) < 1e-3
    for key, value in plain.items():
        assert torch.allclose(value, nhwc_state[key], atol=1e-5), key
    fresh = _tiny_module()
    fresh.load_state_dict(nhwc_state)  # a channels_last checkpoint loads into a default module
    assert isinstance(fresh, IconetModule)
