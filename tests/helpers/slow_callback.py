"""A callback that slows training down, so a test can kill a run between checkpoints."""

import time

import torch

from pytorch_lightning.callbacks import Callback


class SlowTraining(Callback):
    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class RecordBatches(Callback):
    """Append (epoch, step, fnames, slices, mask checksum) of every training batch to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(
                f"{trainer.current_epoch} {trainer.global_step} {list(batch.fname)} "
                f"{batch.slice_num.tolist()} {float((batch.mask * torch.arange(batch.mask.shape[-1])).sum()):.1f}\n"
            )


class SendSignal(Callback):
    """Send ``signum`` to this process after optimiser step ``at_step`` (a scheduler's signal, simulated)."""

    def __init__(self, signum: int, at_step: int) -> None:
        self.signum = signum
        self.at_step = at_step
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os

        if not self.sent and trainer.global_step >= self.at_step:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class RecordLastCheckpoint(Callback):
    """Append, at each training batch start, the global step held by ``<dirpath>/last.ckpt`` (-1: none)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from pathlib import Path

        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        step = int(torch.load(last, weights_only=True)["global_step"]) if last.is_file() else -1
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {step}\n")


class RaiseAt(Callback):
    """Raise a RuntimeError after optimiser step ``at_step`` (a run that crashes mid-fit)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step:
            raise RuntimeError(f"boom at step {trainer.global_step}")
