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
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from .callbacks import CpuThreads, IconetCheckpoint
from .machine_load import available_cores, cpu_sample, foreign_load, threads_for
from .checkpoints import load_checkpoint
from .models import MODELS, registered_name
from .registry import allow_imports, search_working_directory
from .predictions import PredictionWriter
from .reports import FitSummary, ValidationPanels, VolumeMetricsFile
from .pl_modules import IconetDataModule, IconetModule

__all__ = ["IconetCLI", "main"]


def _acquisition_of(data: IconetDataModule):
    return data.acquisition


def mode_channels(mode: str) -> int:
    """Input channels of a ``model.mode``: 1 for magnitude, 2 for complex (real, imag)."""
    return 1 if mode == "magnitude" else 2


class IconetCLI(LightningCLI):
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
        self.add_run_arguments(parser)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/psnr",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
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
        hparams = load_checkpoint(path).get("hyper_parameters") or {}
        adopt_checkpoint_architecture(config, hparams, path)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        # A fixed checkpoint folder under the run folder, so that `--ckpt_path last` finds last.ckpt.
        if config.get("checkpoint") is not None and not config["checkpoint"].get("dirpath"):
            config["checkpoint"]["dirpath"] = str(checkpoint_dir(config))
        # Checkpoints are loaded with weights_only=True unless the user says otherwise.
        if "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True
        if self.subcommand == "fit" and config.get("checkpoint") is not None and not config.get("ckpt_path"):
            claim_checkpoint_dir(Path(config["checkpoint"]["dirpath"]), bool(config.get("overwrite")))
        self._cpu_threads = size_cpu_threads(config)
        self._cpu_workers = int(config.get("data.num_workers") or 0)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
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


def checkpoint_dir(config: Any) -> Path:
    """The run's checkpoint folder: ``checkpoint.dirpath``, else ``<default_root_dir>/checkpoints``."""
    explicit = config.get("checkpoint.dirpath") if config.get("checkpoint") is not None else None
    if explicit:
        return Path(explicit)
    root = config.get("trainer.default_root_dir") or "runs/default"
    return Path(root) / "checkpoints"


def resolve_last(folder: Path) -> Path:
    """``--ckpt_path last``: exactly ``<folder>/last.ckpt``; other ``last*.ckpt`` files make it ambiguous."""
    others = sorted(p.name for p in folder.glob("last*.ckpt") if p.name != "last.ckpt")
    if others:
        raise ValueError(
            f"--ckpt_path last is ambiguous: {folder} holds last.ckpt and {others} (from earlier runs "
            f"of older versions); pass the file you mean with --ckpt_path {folder}/<file>"
        )
    path = folder / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path last: there is no {path} (has this run saved a checkpoint?)")
    return path


def claim_checkpoint_dir(folder: Path, overwrite: bool) -> None:
    """A new ``fit`` needs a checkpoint folder of its own: refuse one that holds checkpoints, or move them aside."""
    existing = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not existing:
        return
    if not overwrite:
        raise ValueError(
            f"{folder} already holds checkpoints of an earlier run ({', '.join(p.name for p in existing)}). "
            f"Resume it with --ckpt_path last, start elsewhere with --trainer.default_root_dir, or pass "
            f"--overwrite true to move them to {folder}/replaced-<time>/ and start afresh"
        )
    target = folder / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir()
    for path in existing:
        path.rename(target / path.name)
    rank_zero_info(f"[iconet-fastmri] --overwrite: moved {len(existing)} earlier checkpoint(s) to {target}")


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value


def adopt_checkpoint_architecture(config: Any, hparams: Dict[str, Any], path: Path) -> None:
    """Take the model's architecture from a checkpoint's hyperparameters, and nothing else.

    The checkpoint names a registered model class and its init args. Where the
    user (command line or config) left an argument at its default, the
    checkpoint's value is used; where the user set another value, that is an
    error naming both. ``data.scale`` and ``model.mode`` are checked the same
    way against the checkpoint's scale and input channels. Every other
    hyperparameter (output paths, learning rate, ...) comes from the user alone.
    """
    spec = hparams.get("model")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(
            f"checkpoint {path} does not record its model as {{'class_path', 'init_args'}}: not an "
            f"iconet-fastmri checkpoint, or written by an older version"
        )
    try:
        name = registered_name(spec["class_path"])
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None
    cls = MODELS.get(name)
    ckpt_args = {k: v for k, v in dict(spec.get("init_args") or {}).items() if isinstance(k, str)}
    defaults = _signature_defaults(cls)
    conflicts: List[str] = []
    user = config.get("model.model")
    user_args: Dict[str, Any] = {}
    if user is not None:
        user_path = user.get("class_path") if isinstance(user, Namespace) else None
        try:
            same = registered_name(user_path) == name
        except ValueError:
            same = False
        if not same:
            conflicts.append(f"model.model: the checkpoint holds {name} ({spec['class_path']}), you gave {user_path}")
        else:
            user_args = _plain(user.get("init_args")) or {}
    merged = dict(ckpt_args)
    for key, value in ckpt_args.items():
        if key in ("scale", "in_chans") or key not in user_args:
            continue
        given = user_args[key]
        if given != value and not (key in defaults and given == defaults[key]):
            conflicts.append(f"model.model.init_args.{key}: the checkpoint has {value!r}, you gave {given!r}")
    scale = ckpt_args.get("scale")
    if scale is not None and config.get("data.scale") != scale:
        if config.get("data.scale") != _DATA_DEFAULTS["scale"]:
            conflicts.append(f"data.scale: the checkpoint was trained at {scale}, you gave {config.get('data.scale')}")
        config["data.scale"] = scale
    in_chans = ckpt_args.get("in_chans")
    if in_chans is not None and mode_channels(config.get("model.mode")) != in_chans:
        ckpt_mode = "magnitude" if in_chans == 1 else "complex"
        if config.get("model.mode") != _MODULE_DEFAULTS["mode"]:
            conflicts.append(f"model.mode: the checkpoint is {ckpt_mode!r}, you gave {config.get('model.mode')!r}")
        config["model.mode"] = ckpt_mode
    if conflicts:
        raise ValueError(
            f"checkpoint {path} conflicts with the command line / config:\n  "
            + "\n  ".join(conflicts)
            + "\nDrop these settings (the checkpoint's are used) or use a matching checkpoint."
        )
    merged.update(scale=config.get("data.scale"), in_chans=mode_channels(config.get("model.mode")))
    config["model.model"] = Namespace(class_path=f"{cls.__module__}.{cls.__qualname__}", init_args=Namespace(**merged))


def _signature_defaults(cls: type) -> Dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}


_DATA_DEFAULTS = _signature_defaults(IconetDataModule)
_MODULE_DEFAULTS = _signature_defaults(IconetModule)


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


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
