"""Issue 21, class 2: no NaN with exit code 0.

Non-finite values are refused at start-up (noise_std), a fit whose loss, gradients or weights turn
non-finite stops naming the step with the last finite weights saved, a checkpoint with NaN weights is
refused naming file and tensor, and a non-finite reconstruction is never written (inference, predict).
"""

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from helpers.runs import cli_args, write_checkpoint, write_tiny_fit_data
from iconet_fastmri.checkpoints import load_checkpoint
from iconet_fastmri.models import ICONet
from iconet_fastmri.physics.acquisition import Acquisition
from iconet_fastmri.pl_modules import IconetDataModule, IconetModule


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_fit_data(tmp_path_factory.mktemp("nonfinite"))


def _cli(sub, data, run, *extra):
    return cli_args(sub, data, run, *extra, model=sub == "fit")


def _checkpoint(path: Path, scale_weights: float = 1.0, nan_in=None) -> Path:
    """A (randomly initialised) ICONet checkpoint as Lightning writes it; weights scaled, or one made NaN."""
    torch.manual_seed(0)
    module = IconetModule(ICONet(scale=2, width=8, blocks_per_stage=1))
    state = {k: (v * scale_weights if v.is_floating_point() else v) for k, v in module.state_dict().items()}
    if nan_in is not None:
        state[nan_in] = state[nan_in].clone()
        state[nan_in].view(-1)[0] = float("nan")
    return write_checkpoint(path, module, state)


def _all_finite(path):
    return all(bool(torch.isfinite(v).all()) for v in load_checkpoint(path)["state_dict"].values()
               if v.is_floating_point())


# ------------------------------------------------------------------ refused at start-up
@pytest.mark.parametrize("value", [math.inf, math.nan, "nan"])
def test_non_finite_noise_std_is_refused_at_start_up(value):
    """`--data.noise_std .inf` trained to NaN (`.nan` is refused as well)."""
    with pytest.raises(ValueError, match="noise_std must be a number >= 0"):
        Acquisition(2, noise_std=value)
    with pytest.raises(ValueError, match="noise_std must be a number >= 0"):
        IconetDataModule(data_path="nowhere", noise_std=value)


@pytest.mark.parametrize("key,text", [("--data.noise_std", ".inf"), ("--data.noise_std", ".nan"),
                                      ("--model.lr", ".nan"), ("--model.lr", ".inf"),
                                      ("--model.lambda_sr", ".inf")])
def test_the_cli_refuses_non_finite_settings_before_training(data, tmp_path, key, text):
    from iconet_fastmri.cli import main

    with pytest.raises(ValueError, match=rf"{key[2:]}.*(must be a number >= 0|not a finite number)"):
        main(_cli("fit", data, tmp_path / "run", key, text, "--trainer.max_epochs", 1))
    assert not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------ a fit that diverges stops
class _Tiny(pl.LightningModule):
    """A linear model whose loss (or one gradient) becomes NaN at optimiser step ``bad_step`` + 1."""

    def __init__(self, bad_step: int, where: str) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step, self.where = bad_step, where

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step == self.bad_step:
            if self.where == "loss":
                loss = loss * float("nan")
            elif self.where == "gradient":
                self.layer.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
            else:  # a finite gradient whose update overflows float32
                self.layer.weight.register_hook(lambda g: torch.full_like(g, 3e38))
        return loss

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(16, 4))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=100.0 if self.where == "update" else 0.1)


@pytest.mark.parametrize("where,what", [("loss", "the training loss is nan"),
                                        ("gradient", "the gradient of layer.weight is non-finite")])
def test_a_non_finite_loss_or_gradient_stops_fit_before_the_weights_change(tmp_path, where, what):
    from iconet_fastmri.callbacks import IconetCheckpoint
    from iconet_fastmri.divergence import StopOnNonFinite, TrainingDiverged

    checkpoint = IconetCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StopOnNonFinite(), checkpoint],
                         gradient_clip_val=1.0, default_root_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=rf"optimiser step 4 \(epoch 0, batch 3\): {what}"):
        trainer.fit(_Tiny(bad_step=3, where=where))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 3 and _all_finite(last)  # the last finite weights


def test_an_update_that_overflows_the_weights_stops_fit_naming_the_step(tmp_path):
    from iconet_fastmri.callbacks import IconetCheckpoint
    from iconet_fastmri.divergence import StopOnNonFinite, TrainingDiverged

    checkpoint = IconetCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0,
                                  last_every_n_steps=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StopOnNonFinite(), checkpoint],
                         default_root_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"the update of optimiser step 4 .* made the weights non-finite "
                                               r"\(NaN/Inf\), first layer\.weight"):
        trainer.fit(_Tiny(bad_step=3, where="update"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 3 and _all_finite(last)  # never replaced by the inf weights


@pytest.mark.slow
def test_a_diverging_iconet_fit_exits_with_an_error_naming_the_step(data, tmp_path):
    """The reported case: training ran to its end with every weight NaN ('PSNR nan dB', exit code 0)."""
    from iconet_fastmri.cli import main

    with pytest.raises(ValueError, match=r"training diverged at optimiser step 2 .*the training loss is nan"):
        main(_cli("fit", data, tmp_path / "run", "--trainer.max_epochs", 2, "--model.lr", "1e30"))
    ckpts = list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt"]
    assert load_checkpoint(ckpts[0])["global_step"] == 1 and _all_finite(ckpts[0])


# ------------------------------------------------------------------ checkpoints with NaN weights
def _first_weight():
    state = IconetModule(ICONet(scale=2, width=8, blocks_per_stage=1)).state_dict()
    return next(k for k, v in state.items() if v.is_floating_point())


def test_a_checkpoint_with_nan_weights_is_refused_naming_file_and_tensor(tmp_path, singlecoil_dir):
    """run_inference.py wrote NaN reconstructions from such a checkpoint, with exit code 0."""
    from iconet_fastmri.inference import load_method, run_inference

    name = _first_weight()
    bad = _checkpoint(tmp_path / "nan.ckpt", nan_in=name)
    with pytest.raises(ValueError, match=rf"nan\.ckpt holds non-finite \(NaN/Inf\) weights: {name}"):
        load_method(bad)
    with pytest.raises(ValueError, match=rf"nan\.ckpt holds non-finite"):
        run_inference(singlecoil_dir, tmp_path / "out", checkpoint=bad, progress=False)
    assert not list((tmp_path / "out").glob("*.h5"))


def test_the_cli_refuses_a_checkpoint_with_nan_weights(data, tmp_path):
    from iconet_fastmri.cli import main

    name = _first_weight()
    bad = _checkpoint(tmp_path / "nan.ckpt", nan_in=name)
    with pytest.raises(ValueError, match=rf"nan\.ckpt holds non-finite \(NaN/Inf\) weights: {name}"):
        main(_cli("validate", data, tmp_path / "run", "--ckpt_path", bad))


# ------------------------------------------------------------------ never write a non-finite reconstruction
def test_inference_never_writes_a_non_finite_reconstruction(tmp_path, singlecoil_dir):
    """Finite but absurd weights overflow: the reconstruction is NaN/Inf, and must not be written silently."""
    from iconet_fastmri.inference import run_inference

    huge = _checkpoint(tmp_path / "huge.ckpt", scale_weights=1e30)
    with pytest.raises(ValueError, match=r"reconstruction of file_demo_\d+\.h5 slice \d+ is non-finite"):
        run_inference(singlecoil_dir, tmp_path / "out", checkpoint=huge, progress=False, batch_size=2)
    for path in (tmp_path / "out").glob("*.h5"):  # whatever was written is finite
        with h5py.File(path) as f:
            assert np.isfinite(f["reconstruction"][()]).all()


def test_predict_never_writes_a_non_finite_reconstruction(tmp_path, singlecoil_dir):
    from iconet_fastmri.cli import main

    huge = _checkpoint(tmp_path / "huge.ckpt", scale_weights=1e30)
    with pytest.raises(ValueError, match=r"reconstruction of file_demo_\d+\.h5 slice \d+ is non-finite"):
        main(["predict", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--ckpt_path", str(huge), "--data.data_path", str(tmp_path),
              "--data.test_path", str(singlecoil_dir), "--data.hr_crop", "[32, 32]", "--data.batch_size", "2",
              "--data.num_workers", "0", "--data.use_dataset_cache", "false",
              "--prediction_writer.out_dir", str(tmp_path / "predict")])
    for path in (tmp_path / "predict").glob("*.h5"):
        with h5py.File(path) as f:
            assert np.isfinite(f["reconstruction"][()]).all()


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_never_report_a_non_finite_score(tmp_path, singlecoil_dir, subcommand):
    """Finite weights whose output overflows: validate/test stop naming file and slice instead of 'PSNR nan', exit 0."""
    from iconet_fastmri.cli import main

    huge = _checkpoint(tmp_path / "huge.ckpt", scale_weights=1e30)
    with pytest.raises(ValueError, match=r"reconstruction of file_demo_\d+\.h5 slice \d+ is non-finite"):
        main([subcommand, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--ckpt_path", str(huge), "--data.data_path", str(tmp_path), "--data.val_path", str(singlecoil_dir),
              "--data.test_path", str(singlecoil_dir), "--data.hr_crop", "[32, 32]", "--data.batch_size", "2",
              "--data.num_workers", "0", "--data.use_dataset_cache", "false"])
