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

Every checkpoint (``last.ckpt`` and the best) is written to a hidden temporary
beside its destination (:func:`iconet_fastmri.io.temporary_name`) and renamed
over it with ``os.replace``: the previous file stays whole until the new one is
complete. Lightning's own writer stages the bytes in ``TMPDIR`` and moves them;
with ``TMPDIR`` on another filesystem that move is a copy which truncates its
destination first, so a kill during it used to leave ``last.ckpt`` at 0 bytes.
Temporaries of a writer killed with SIGKILL are removed when the next run starts.

Weights with NaN or Inf (a diverged run) are never saved: ``last.ckpt`` and
the best checkpoint keep the last finite weights, and a warning says which step
they hold.

The file is always ``last.ckpt`` (no ``last-v1.ckpt``): a run folder holds
one run (see :mod:`iconet_fastmri.cli`).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any, Dict, Optional
from weakref import proxy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from . import machine_load
from .divergence import non_finite_tensors
from .io import remove_stale_partials, temporary_name

__all__ = ["CpuThreads", "IconetCheckpoint", "nonfinite_tensors"]


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
        self._nonfinite_step: Optional[int] = None  # the step whose weights were refused, once reported

    # ------------------------------------------------------------------ how to write
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            remove_stale_partials(self.dirpath, suffix=".ckpt")  # left by a writer killed mid-save

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        """Write ``filepath`` through a temporary beside it and ``os.replace``; never non-finite weights."""
        if self._refuse_nonfinite(trainer, filepath):
            return
        tmp = trainer.strategy.broadcast(str(temporary_name(filepath)))  # one name on every rank
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                if os.path.isdir(tmp):  # a sharded (folder) checkpoint: replace the old folder
                    shutil.rmtree(filepath, ignore_errors=True)
                os.replace(tmp, filepath)
        except BaseException:
            if trainer.is_global_zero:
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    Path(tmp).unlink(missing_ok=True)
            raise
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:  # as ModelCheckpoint._save_checkpoint does
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    # ------------------------------------------------------------------ non-finite weights
    def _save_topk_checkpoint(self, trainer: "pl.Trainer", monitor_candidates: Dict[str, torch.Tensor]) -> None:
        # Checked before Lightning's bookkeeping, which would otherwise drop (and delete) the finite best.
        if self.save_top_k and self._refuse_nonfinite(trainer, "the best checkpoint"):
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: "pl.Trainer", monitor_candidates: Dict[str, torch.Tensor]) -> None:
        if self.save_last and self._refuse_nonfinite(trainer, "last.ckpt"):
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def _refuse_nonfinite(self, trainer: "pl.Trainer", what: str) -> bool:
        """True (and a warning, once per run) if the module's weights hold NaN or Inf."""
        bad = nonfinite_tensors(trainer.lightning_module)
        if not bad:
            return False
        if self._nonfinite_step is None:
            self._nonfinite_step = trainer.global_step
            rank_zero_warn(
                f"[iconet-fastmri] the weights of step {trainer.global_step} are not finite (NaN/Inf in "
                f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}), so no checkpoint is written from them "
                f"(refused for {what}): {self._kept_report()}"
            )
        return True

    def _kept_report(self) -> str:
        """Which finite weights the checkpoint folder still holds, in words."""
        path = self.last_model_path
        kept = []
        if path and self._fs.isfile(path):
            step = f" of step {self._last_global_step_saved}" if self._last_global_step_saved > 0 else ""
            kept.append(f"{path} keeps the last finite weights{step}")
        if self.best_model_path and self._fs.isfile(self.best_model_path):
            kept.append(f"the best checkpoint stays {self.best_model_path}")
        return "; ".join(kept) if kept else "no checkpoint of this run holds finite weights"

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
        if self._nonfinite_step is not None:
            return (f"the weights are not finite since step {self._nonfinite_step} and were not saved; "
                    f"{self._kept_report()}")
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
        if self._nonfinite_step is not None and nonfinite_tensors(pl_module):
            rank_zero_warn(
                f"[iconet-fastmri] the run ended with non-finite weights (NaN/Inf since step "
                f"{self._nonfinite_step}); they were not saved: {self._kept_report()}"
            )

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


def nonfinite_tensors(module: torch.nn.Module) -> list:
    """Names of the floating-point parameters and buffers of ``module`` that hold NaN or Inf.

    One reduction per device decides (a single host sync on a GPU); names are looked up only when
    something is not finite.
    """
    tensors = [(name, t) for name, t in module.state_dict().items()
               if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()) and t.numel()]
    by_device: Dict[torch.device, list] = {}
    for _, t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return []
    return [name for name, _ in non_finite_tensors(tensors)]


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
