"""The ``iconet-fastmri`` command: a LightningCLI with ``fit / validate / test / predict``.

Examples::

    iconet-fastmri fit --config configs/demo.yaml
    iconet-fastmri fit --config configs/knee_singlecoil_x2.yaml --data.data_path /data/knee
    iconet-fastmri fit --config configs/demo.yaml --data.mask.name poisson --data.mask.accelerations [6]
    iconet-fastmri fit --config configs/demo.yaml --ckpt_path last      # resume

What the CLI adds to Lightning's:

* the network is injected: ``model.model`` takes any registered model by
  ``class_path``/``init_args`` (``--model.model ICONet --model.model.init_args.width 32``;
  ``--model.model.help ICONet`` lists its arguments);
* the acquisition model lives under ``data`` (``scale``, ``mask``, ``noise_std``,
  ``kspace_steps``): the data module builds the one
  :class:`~iconet_fastmri.physics.acquisition.Acquisition`, which is handed to
  the Lightning module as an object (``model.acquisition``, not a setting of its
  own); ``data.scale`` fills the network's ``scale`` argument and ``model.mode``
  its ``in_chans``;
* what a run reports are callbacks: ``--volume_metrics.path val.json`` (per-volume
  metrics as JSON), ``--panels.num_images`` (TensorBoard panels) and the end-of-fit
  summary (:mod:`iconet_fastmri.reports`);
* a checkpoint callback (``checkpoint.*``, :class:`~iconet_fastmri.callbacks.IconetCheckpoint`)
  keeping the best ``val/psnr`` and an always-current ``last.ckpt`` in a fixed
  folder, so ``--ckpt_path last`` resumes;
* the resolved config is saved with every run (``config.yaml`` in the log folder);
* ``use_distributed_sampler`` is off: the data module gives validation whole
  volumes per rank with fastmri's ``VolumeSampler``;
* unknown config keys are errors (jsonargparse), never silently ignored;
* checkpoints (``--ckpt_path``) are loaded with ``weights_only=True`` and
  checked against :mod:`iconet_fastmri.checkpoints`' allow-list first, and
  only the model's architecture is taken from them (a registered class and
  its init args, where the user gave none; a conflict is an error naming
  both values). Lightning's own copying of every hyperparameter (output paths
  included) over the command line is replaced;
* ``--ckpt_path last`` is exactly ``<default_root_dir>/checkpoints/last.ckpt``;
  ``fit`` into a run folder whose ``checkpoints/`` holds an earlier run's
  files is refused unless resuming (``--ckpt_path last``) or ``--overwrite true``
  (which moves them to ``checkpoints/replaced-<time>/``);
* ``predict`` writes reconstructions (``--prediction_writer.out_dir``, default
  ``<default_root_dir>/predictions``) exactly as ``run_inference.py`` does
  (:class:`~iconet_fastmri.predictions.PredictionWriter`), for the data
  module's test split (``--data.test_path`` for any folder);
* ``last.ckpt`` holds the final weights however ``fit`` ends
  (:class:`~iconet_fastmri.callbacks.IconetCheckpoint`);
* what you set counts: a value on the command line or in a config file that
  conflicts with the ``--ckpt_path`` checkpoint's architecture is an error
  naming both, even when it is the default (:func:`typed_settings`);
  resuming ``fit`` with another mask, noise or k-space steps than the
  checkpoint's run is a warning naming both;
* a fit stops at the first non-finite loss, gradient or weight, naming the
  step (``divergence.*``, :class:`~iconet_fastmri.divergence.StopOnNonFinite`),
  and a checkpoint with NaN/Inf weights is refused;
* one ``fit`` at a time per checkpoint folder (:class:`RunLock`);
* :func:`run` (the command and the script) prints a refusal's message alone
  and exits with status 1; ``ICONET_DEBUG=1`` adds the traceback. :func:`main`
  raises (for use from Python).

The run folder's rules live in :mod:`iconet_fastmri.run_folder`, what a
checkpoint may decide in :mod:`iconet_fastmri.checkpoint_settings`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from .callbacks import CpuThreads, IconetCheckpoint
from .divergence import NonFiniteError, StopOnNonFinite, check_finite_state
from .machine_load import available_cores, cpu_sample, foreign_load, threads_for
from .checkpoints import UnsafeCheckpointError, load_checkpoint
from .io import DEBUG_ENV
from .registry import allow_imports, search_working_directory
from .predictions import PredictionWriter
from .reports import FitSummary, ValidationPanels, VolumeMetricsFile
from .pl_modules import IconetDataModule, IconetModule
from .checkpoint_settings import adopt_checkpoint_architecture, mode_channels, typed_settings, warn_changed_acquisition
from .run_folder import RunLock, checkpoint_dir, claim_checkpoint_dir, first_process, resolve_last

__all__ = ["IconetCLI", "RunLock", "is_refusal", "main", "run"]


def _acquisition_of(data: IconetDataModule):
    return data.acquisition


class IconetCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock: Optional[RunLock] = None
        try:
            super().__init__(*args, **kwargs)
        finally:  # however the run ends, even when it fails in setup
            if self._lock is not None:
                self._lock.release()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._given_args = args if args is not None else sys.argv[1:]
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.scale", "model.model.init_args.scale")
        parser.link_arguments("model.mode", "model.model.init_args.in_chans", compute_fn=mode_channels)
        # The data module's Acquisition object itself, not a copy of its settings.
        parser.link_arguments("data", "model.acquisition", apply_on="instantiate", compute_fn=_acquisition_of)
        parser.add_lightning_class_args(IconetCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(VolumeMetricsFile, "volume_metrics")
        parser.add_lightning_class_args(ValidationPanels, "panels")
        parser.add_lightning_class_args(FitSummary, "summary")
        parser.add_lightning_class_args(StopOnNonFinite, "divergence")
        self.add_run_arguments(parser)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/psnr",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                # IconetCheckpoint's own default, which the CLI would otherwise replace by Lightning's True:
                # a resumed run whose folder was moved or copied wrote last-v1.ckpt next to last.ckpt.
                "checkpoint.enable_version_counter": False,
                "trainer.use_distributed_sampler": False,
                "trainer.gradient_clip_val": 1.0,
            }
        )

    def add_run_arguments(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit into a run folder whose checkpoints/ already holds an earlier run's checkpoints: "
            "they are moved to checkpoints/replaced-<time>/ first (without it, such a start is refused; "
            "resume instead with --ckpt_path last)",
        )

    def _parse_ckpt_path(self) -> None:
        # Lightning would copy every hyperparameter of the checkpoint over the command line
        # (paths included) and import the class path it names. Instead: the file is checked
        # with our allow-list, `last` resolves to exactly one file, and only the model's
        # architecture is taken, where the user gave none (a conflict is an error).
        sub = self.config.get("subcommand")
        if not sub:
            return
        config = self.config[sub]
        ckpt = config.get("ckpt_path")
        if not ckpt or ckpt in ("best", "hpc", "registry"):
            return
        path = resolve_last(checkpoint_dir(config)) if ckpt == "last" else Path(ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt}: no checkpoint file {path}")
        config["ckpt_path"] = str(path)
        checkpoint = load_checkpoint(path)
        if isinstance(checkpoint.get("state_dict"), dict):
            check_finite_state(checkpoint["state_dict"], f"checkpoint {path}")
        hparams = checkpoint.get("hyper_parameters") or {}
        typed = typed_settings(self.parser, getattr(self, "_given_args", None), sub)
        adopt_checkpoint_architecture(config, hparams, path, typed=typed)
        if sub == "fit":
            warn_changed_acquisition(config, checkpoint, path)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        # A fixed checkpoint folder under the run folder, so that `--ckpt_path last` finds last.ckpt.
        if config.get("checkpoint") is not None and not config["checkpoint"].get("dirpath"):
            config["checkpoint"]["dirpath"] = str(checkpoint_dir(config))
        # Checkpoints are loaded with weights_only=True unless the user says otherwise.
        if "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True
        check_finite_settings(config)
        if self.subcommand == "fit" and first_process():
            # One fit at a time per checkpoint folder (a second one, started alongside, is refused).
            folder = config["checkpoint"]["dirpath"] if config.get("checkpoint") is not None else None
            self._lock = RunLock(Path(folder) if folder else checkpoint_dir(config)).acquire()
        if self.subcommand == "fit" and config.get("checkpoint") is not None and not config.get("ckpt_path"):
            claim_checkpoint_dir(Path(config["checkpoint"]["dirpath"]), bool(config.get("overwrite")))
        self._cpu_threads = size_cpu_threads(config)
        self._cpu_workers = int(config.get("data.num_workers") or 0)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(_RunPhase())
        if getattr(self, "_cpu_threads", None) is not None and not os.environ.get("OMP_NUM_THREADS"):
            # Data-loader workers' CPU would count as "other processes": only without workers.
            if self._cpu_workers == 0:
                trainer.callbacks.append(CpuThreads(available_cores()))
        return trainer


def size_cpu_threads(config: Any) -> Optional[int]:
    """On the CPU, give torch the cores the data-loader workers and other processes leave.

    ``cores - num_workers - (cores other processes kept busy over 0.3 s)``, at
    least 1 (:func:`threads_for`). A worker process or another program next to
    a torch process using every core oversubscribes the machine; OpenMP threads
    then spin against each other (one ICONet step 4x slower on 2 cores in our
    measurement). During training :class:`~iconet_fastmri.callbacks.CpuThreads`
    re-measures the other processes' load over each epoch and adjusts.
    ``OMP_NUM_THREADS``, when set, wins. Says what it chose; returns the thread
    count (``None``: not the CPU).
    """
    accelerator = str(config.get("trainer.accelerator") or "auto")
    if accelerator in ("gpu", "cuda", "mps") or (accelerator == "auto" and torch.cuda.is_available()):
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()
        rank_zero_info(f"[iconet-fastmri] CPU: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}: torch uses {threads} thread(s)")
        return threads
    cores = available_cores()
    workers = int(config.get("data.num_workers") or 0)
    busy = foreign_load(cpu_sample(), min_window_s=0.3) or 0.0
    threads = threads_for(cores, workers, busy)
    torch.set_num_threads(threads)
    rank_zero_info(
        f"[iconet-fastmri] CPU: {cores} core(s), {workers} data-loader worker(s), other processes busy on "
        f"{busy:.1f} core(s): torch uses {threads} thread(s) (set OMP_NUM_THREADS to choose)"
    )
    return threads


def check_finite_settings(config: Any) -> None:
    """NaN or infinite numbers among the ``model`` and ``data`` settings are refused at start-up, naming the key.

    (``--model.lr .inf`` or ``--data.noise_std .inf`` trained to NaN and exited 0.)
    """
    bad = [f"{key} = {number}" for section in ("model", "data")
           for key, number in _numbers(config.get(section), section) if not math.isfinite(number)]
    if bad:
        raise ValueError(f"{'; '.join(bad)}: not a finite number. NaN and infinite settings are refused "
                         f"(they would train to NaN)")


def _numbers(value: Any, key: str) -> Iterable[Any]:
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _numbers(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{key}[{i}]")
    elif isinstance(value, float):
        yield key, value


class _RunPhase(pl.Callback):
    """Marks an exception raised once training / evaluation / prediction has started (see :func:`run`)."""

    def __init__(self) -> None:
        self.started = False

    def _start(self, *args: Any) -> None:
        self.started = True

    on_train_start = on_validation_start = on_test_start = on_predict_start = _start

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        try:
            exception.iconet_mid_run = self.started  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - an exception type without attributes
            pass


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of ``iconet-fastmri`` and ``scripts/train_iconet_fastmri.py``.

    The user's own command line may name masks and k-space steps by dotted path
    (``--data.mask.name my_masks.EveryOtherLine``): for it, and only for it,
    registries import the module named, found on ``PYTHONPATH`` or in the
    folder the command runs from (:mod:`iconet_fastmri.registry`). Names read
    from checkpoints stay limited to registered ones.
    """
    search_working_directory()
    with allow_imports():
        IconetCLI(
            IconetModule,
            IconetDataModule,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "yaml"},
            args=args,
        )


#: Exceptions that refuse a run with a clear message, before it has started its work.
REFUSALS = (ValueError, OSError, UnsafeCheckpointError)


def is_refusal(error: BaseException) -> bool:
    """A refusal (its message alone says it all) rather than a crash (whose traceback matters).

    A refusal is a ``ValueError``, ``OSError`` (``FileNotFoundError``,
    ``FileExistsError`` ...) or unsafe checkpoint raised while the command line,
    config, checkpoint and data are checked, before training, evaluation or
    prediction start; and a non-finite number at any time (a diverged fit, a
    NaN reconstruction: the message names the step or the file and slice).
    """
    if isinstance(error, NonFiniteError):
        return True
    return isinstance(error, REFUSALS) and not getattr(error, "iconet_mid_run", False)


def run(args: Optional[List[str]] = None) -> None:
    """The ``iconet-fastmri`` command and ``scripts/train_iconet_fastmri.py``: :func:`main` for a terminal.

    A refused run (:func:`is_refusal`) prints its message alone on stderr and
    exits with status 1; ``ICONET_DEBUG=1`` shows the traceback as well. A crash
    (any other exception, or one raised mid-training) keeps its traceback.
    """
    try:
        main(args)
    except Exception as err:
        if not is_refusal(err) or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            raise
        # As the other scripts print theirs (io.run_script), with the type: it names the kind of refusal.
        sys.stderr.write(f"error: {type(err).__name__}: {err}\n(for the Python traceback, set {DEBUG_ENV}=1)\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    run()
