"""Callbacks: a ModelCheckpoint whose ``last.ckpt`` is always the latest state."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["IconetCheckpoint"]


class IconetCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` that writes ``last.ckpt`` at every checkpoint event.

    Lightning 2.6 only refreshes ``last.ckpt`` when a top-k checkpoint was
    saved at the same step, i.e. when the monitored metric improved; after an
    epoch without improvement ``last.ckpt`` would be stale and
    ``--ckpt_path last`` would silently resume from an older state. Here
    ``last.ckpt`` is written (atomically, by Lightning's checkpoint IO) every
    time a checkpoint event happens.
    """

    def _ensure_last(self, trainer: "pl.Trainer") -> None:
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)
