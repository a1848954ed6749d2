"""Callbacks: a ModelCheckpoint whose ``last.ckpt`` always holds the newest weights, and
:class:`CpuThreads`, which sizes torch's CPU threads to the load of other processes.

Lightning 2.6 refreshes ``last.ckpt`` only at its checkpoint events, which
come with validation: with ``check_val_every_n_epoch: 25`` and ``max_steps``,
or a ``max_time`` limit between validations, or a scheduler's SIGTERM, the
last steps of a run were never saved, and ``validate`` / inference silently
used older weights. :class:`IconetCheckpoint` writes ``last.ckpt``

* at every checkpoint event (as before), and at the end of every training
  epoch whether or not validation ran;
* every ``last_every_n_steps`` optimiser steps, if set;
* when ``fit`` ends for any reason: ``max_epochs``, ``max_steps``,
  ``max_time``, early stopping, and an exception or signal (SIGTERM and
  SIGINT reach ``on_exception``; SIGUSR1, where no one else handles it, asks
  the trainer to stop after the current step, as a scheduler's warning
  signal should). After an exception it says what is really on disk: the
  file it wrote (checked to exist), or that nothing was written (a fit that
  fails in setup has no weights to save).

Writes go through Lightning's checkpoint IO (a temporary file and a rename).
The file is always ``last.ckpt`` (no ``last-v1.ckpt``): a run folder holds
one run (see :mod:`iconet_fastmri.cli`).
"""

from __future__ import annotations

import signal
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from . import machine_load

__all__ = ["CpuThreads", "IconetCheckpoint"]


class IconetCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` with an always-current ``last.ckpt``.

    Args:
        last_every_n_steps: also refresh ``last.ckpt`` every this many
            optimiser steps (``None``: at epoch ends and checkpoint events only).
        *args, **kwargs: :class:`ModelCheckpoint`'s. ``enable_version_counter``
            defaults to ``False`` here, so the newest state is always ``last.ckpt``.
    """

    def __init__(self, *args: Any, last_every_n_steps: Optional[int] = None, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise ValueError(f"last_every_n_steps must be >= 1 or None, got {last_every_n_steps}")
        self.last_every_n_steps = last_every_n_steps
        self._previous_sigusr1: Any = None

    def _ensure_last(self, trainer: "pl.Trainer") -> Optional[str]:
        """Write ``last.ckpt`` unless it already holds this step; the path if a file was written now."""
        if not self.save_last or self.dirpath is None or self._should_skip_saving_checkpoint(trainer):
            return None
        if self._last_global_step_saved == trainer.global_step:
            return None
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        path = self.last_model_path
        if path and self._last_global_step_saved == trainer.global_step and self._fs.isfile(path):
            return path
        return None

    def _exception_report(self, trainer: "pl.Trainer", written: Optional[str]) -> str:
        """What :meth:`on_exception` really left on disk, in words."""
        step = trainer.global_step
        if written:
            return f"saved the weights of step {step} to {written}"
        path = self.last_model_path
        if path and self._last_global_step_saved == step and self._fs.isfile(path):
            return f"nothing new to save: {path} already holds the weights of step {step}"
        if step == 0:
            return "no checkpoint was written: the run stopped before its first optimiser step (no trained weights)"
        if not self.save_last:
            return f"no checkpoint was written (save_last is off): the weights of step {step} were not saved"
        return f"no checkpoint was written: the weights of step {step} were not saved"

    # ------------------------------------------------------------------ when to write
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        n = self.last_every_n_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._ensure_last(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_end(trainer, pl_module)
        self._ensure_last(trainer)

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore_sigusr1()  # Lightning calls no teardown hook after an exception
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        # Say only what is on disk: a fit that fails in setup has no weights to save.
        try:
            report = self._exception_report(trainer, self._ensure_last(trainer))
        except Exception as err:  # never hide the original error
            report = f"could not save last.ckpt: {type(err).__name__}: {err}"
        rank_zero_info(f"[iconet-fastmri] {type(exception).__name__}: {report}")

    # ------------------------------------------------------------------ SIGUSR1
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Not on_fit_start: Lightning records the process's signal handlers after that hook and
        # puts them back when a run fails, which would leave this handler installed.
        super().on_train_start(trainer, pl_module)
        if not hasattr(signal, "SIGUSR1"):  # pragma: no cover - Windows
            return
        current = signal.getsignal(signal.SIGUSR1)
        if current in (signal.SIG_DFL, None):  # Lightning's SLURM handler, or the user's, wins

            def stop(signum: int, frame: Any) -> None:
                rank_zero_info("[iconet-fastmri] SIGUSR1: stopping after this step; last.ckpt will hold it")
                trainer.should_stop = True

            self._previous_sigusr1 = current
            signal.signal(signal.SIGUSR1, stop)

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._restore_sigusr1()

    def _restore_sigusr1(self) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None


class CpuThreads(pl.Callback):
    """Re-size torch's CPU threads after each training epoch to the cores other processes left free.

    The CLI adds it for CPU runs without data-loader workers and without
    ``OMP_NUM_THREADS``. Over each epoch it measures the CPU time the whole
    machine spent outside this process (``/proc/stat``), in cores, and sets
    ``threads_for(cores, 0, busy)`` threads; a change is logged. An epoch-long
    average, so a short burst of other work does not flip it.

    Args:
        cores: the cores this process may use.
    """

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._start: Any = None
        self.history: list = []

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._start = machine_load.cpu_sample()

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        busy = machine_load.foreign_load(self._start, min_window_s=0.0)
        if busy is None:
            return
        threads = machine_load.threads_for(self.cores, 0, busy)
        self.history.append((trainer.current_epoch, busy, threads))
        if threads != torch.get_num_threads():
            rank_zero_info(
                f"[iconet-fastmri] CPU: other processes kept {busy:.1f} of {self.cores} core(s) busy in epoch "
                f"{trainer.current_epoch}: torch now uses {threads} thread(s) (was {torch.get_num_threads()})"
            )
            torch.set_num_threads(threads)
