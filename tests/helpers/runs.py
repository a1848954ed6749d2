"""What many end-to-end tests share: a tiny training set, a CLI command line over it, and a deadline."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, List

from iconet_fastmri.demo import write_fastmri_dataset

__all__ = ["write_tiny_fit_data", "cli_args", "deadline", "write_checkpoint"]


def write_tiny_fit_data(root: Path) -> Path:
    """``root/singlecoil_train`` (2 volumes x 3 slices) and ``root/singlecoil_val`` (1 x 2), 32x32; returns ``root``."""
    write_fastmri_dataset(root / "singlecoil_train", "singlecoil", num_volumes=2, slices=3, recon_size=(32, 32), seed=3)
    write_fastmri_dataset(root / "singlecoil_val", "singlecoil", num_volumes=1, slices=2, recon_size=(32, 32),
                          seed=4, first_index=9)
    return root


def cli_args(sub: str, data: Path, run: Path, *extra: Any, model: bool = True) -> List[str]:
    """A quiet CPU command line for ``iconet_fastmri.cli.main`` over :func:`write_tiny_fit_data`'s folders.

    ``model``: name a tiny ICONet (width 8, one block per stage); leave it out to test what a checkpoint decides.
    """
    args = [
        sub, "--seed_everything", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.default_root_dir", str(run),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--data.data_path", str(data), "--data.hr_crop", "[32, 32]",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.use_dataset_cache", "false",
    ]
    if sub == "fit":
        args += ["--trainer.num_sanity_val_steps", "0"]
    if model:
        args += ["--model.model", "ICONet", "--model.model.init_args.width", "8",
                 "--model.model.init_args.blocks_per_stage", "1"]
    return args + [str(a) for a in extra]


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise ``TimeoutError`` in the test if the block runs longer than ``seconds`` (a hang fails, never hangs)."""

    def _expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a declared size was not bounded")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_checkpoint(path: Path, module: Any, state: Any = None) -> Path:
    """``module`` saved as Lightning writes a fit's checkpoint (``state``: another state dict), for a 32x32 x2 run."""
    import pytorch_lightning as pl
    import torch

    torch.save({
        "state_dict": module.state_dict() if state is None else state, "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0,
        "IconetDataModule": {"scale": 2, "challenge": "singlecoil", "hr_crop": [32, 32],
                             "mask": {"name": "random", "center_fractions": [0.08], "accelerations": [4.0],
                                      "seed": None, "path": None, "options": {}}},
    }, path)
    return path
