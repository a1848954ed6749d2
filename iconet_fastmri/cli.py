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

The module is long because it holds every start-up check of a run (what a
checkpoint may decide against what you typed, non-finite settings, the run
folder and its lock, the CPU threads) next to the CLI hooks that call them.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .callbacks import CpuThreads, IconetCheckpoint
from .divergence import NonFiniteError, StopOnNonFinite, check_finite_state
from .machine_load import available_cores, cpu_sample, foreign_load, threads_for
from .checkpoints import UnsafeCheckpointError, load_checkpoint
from .io import DEBUG_ENV
from .models import MODELS, registered_name
from .registry import allow_imports, search_working_directory
from .predictions import PredictionWriter
from .reports import FitSummary, ValidationPanels, VolumeMetricsFile
from .pl_modules import IconetDataModule, IconetModule

try:  # parse the command line again without applying links: what the user set, defaults left out
    from jsonargparse._link_arguments import skip_apply_links as _skip_links
except ImportError:  # pragma: no cover - another jsonargparse: the option names on the command line are used
    _skip_links = None

__all__ = ["IconetCLI", "RunLock", "is_refusal", "main", "run"]


def _acquisition_of(data: IconetDataModule):
    return data.acquisition


def mode_channels(mode: str) -> int:
    """Input channels of a ``model.mode``: 1 for magnitude, 2 for complex (real, imag)."""
    return 1 if mode == "magnitude" else 2


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
        if self.subcommand == "fit" and _first_process():
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


class RunLock:
    """One ``fit`` at a time per checkpoint folder.

    The lock is the file ``.<folder name>.lock`` next to the folder (for
    ``runs/demo/checkpoints``: ``runs/demo/.checkpoints.lock``; inside it,
    Lightning would warn that the folder is not empty), created exclusively
    (``O_CREAT | O_EXCL``) and holding the owner's pid, host and start time. A
    second ``fit`` into the folder is refused while the owner runs. The lock is
    removed when the run ends, however it ends; a lock left by a killed run
    (its pid no longer runs on this host) is taken over, with a message. A
    lock of another host cannot be checked: the message says to delete the
    file if no run is using the folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self._held = False
        self._made: List[Path] = []

    def acquire(self) -> "RunLock":
        missing = [p for p in [self.folder.parent, *self.folder.parent.parents] if not p.exists()]
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  # removed again at release if still empty
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "folder": str(self.folder)}
        for _ in range(5):
            if self._create(record):
                self._held = True
                return self
            holder = self._read(self.path)
            if holder is None and self.path.exists():
                raise FileExistsError(
                    f"{self.folder} is locked by {self.path}, which cannot be read: another fit may be running "
                    f"into it. If none is, delete {self.path}"
                )
            if holder is None:  # released meanwhile: try again
                continue
            if not self._stale(holder):
                raise FileExistsError(
                    f"another fit is running into {self.folder}: pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')} (lock {self.path}). Wait for it to "
                    f"end, or use another --trainer.default_root_dir"
                    + ("" if holder.get("host") == socket.gethostname() else
                       f". That host cannot be checked from here: if no fit runs there, delete {self.path}")
                )
            if self._take_over(holder):
                rank_zero_info(
                    f"[iconet-fastmri] {self.path}: the fit that held this lock (pid {holder.get('pid')}, "
                    f"started {holder.get('started')}) no longer runs; taking it over"
                )
        raise FileExistsError(f"could not lock {self.folder} ({self.path} keeps changing): another fit is starting")

    def release(self) -> None:
        if self._held:
            self._held = False
            holder = self._read(self.path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
        for folder in self._made:  # innermost first: only the empty folders this lock created
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    # ------------------------------------------------------------------ internals
    def _create(self, record: Dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        return True

    @staticmethod
    def _read(path: Path) -> Optional[Dict[str, Any]]:
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _stale(holder: Dict[str, Any]) -> bool:
        """The holder's pid no longer runs on this host (a lock of another host is never stale)."""
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, another user's
            return False
        return False

    def _take_over(self, holder: Dict[str, Any]) -> bool:
        """Move the stale lock aside (atomically), unless another process took it over first."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if self._read(aside) != holder:  # someone's fresh lock, not the stale one: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True


def _first_process() -> bool:
    """Rank 0 of the run (other ranks of a multi-process run re-run the CLI into rank 0's folder)."""
    return getattr(rank_zero_only, "rank", 0) == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")


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


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value


def typed_settings(parser: Any, args: Any, subcommand: Optional[str]) -> Optional[Set[str]]:
    """The dotted keys the user set, on the command line or in a config file, defaults left out.

    ``--data.scale 2`` counts even where 2 is the default. The arguments are
    parsed a second time without defaults (jsonargparse's ``defaults=False``);
    where that fails, the option names on the command line are used.
    """
    if isinstance(args, (dict, Namespace)):  # LightningCLI(args={...})
        given: Any = args if isinstance(args, Namespace) else Namespace(**_nested(args))
    else:
        args = [str(a) for a in (args or [])]
        try:
            if _skip_links is None:
                raise RuntimeError("no way to parse without links")
            with _skip_links():
                given = parser.parse_args(args, defaults=False)
        except (Exception, SystemExit):  # pragma: no cover - jsonargparse internals changed
            return _option_names(args)
    section = given.get(subcommand) if subcommand and subcommand in given else given
    return set(section.keys()) if isinstance(section, Namespace) else set()


def _nested(value: Any) -> Any:
    return Namespace(**{k: _nested(v) for k, v in value.items()}) if isinstance(value, dict) else value


def _option_names(args: Iterable[str]) -> Set[str]:
    return {a[2:].split("=", 1)[0].rstrip("+") for a in args if a.startswith("--")}


def adopt_checkpoint_architecture(
    config: Any, hparams: Dict[str, Any], path: Path, typed: Optional[Set[str]] = None
) -> None:
    """Take the model's architecture from a checkpoint's hyperparameters, and nothing else.

    The checkpoint names a registered model class and its init args. Where the
    user (command line or config file) did not set an argument, the
    checkpoint's value is used; where the user set another value, that is an
    error naming both, even when the value typed is the default
    (``--data.scale 2`` with a x4 checkpoint). ``typed`` holds the dotted keys
    the user set (:func:`typed_settings`); ``None``: a value other than the
    default counts as set. ``data.scale`` and ``model.mode`` are checked the
    same way against the checkpoint's scale and input channels. Every other
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

    def was_set(key: str, value: Any, default: Any) -> bool:
        return key in typed if typed is not None else value != default

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
        if given != value and was_set(f"model.model.init_args.{key}", given, defaults.get(key, _NO_DEFAULT)):
            conflicts.append(f"model.model.init_args.{key}: the checkpoint has {value!r}, you gave {given!r}")
    scale = ckpt_args.get("scale")
    if scale is not None and config.get("data.scale") != scale:
        if was_set("data.scale", config.get("data.scale"), _DATA_DEFAULTS["scale"]):
            conflicts.append(f"data.scale: the checkpoint was trained at {scale}, you gave {config.get('data.scale')}")
        config["data.scale"] = scale
    in_chans = ckpt_args.get("in_chans")
    if in_chans is not None and mode_channels(config.get("model.mode")) != in_chans:
        ckpt_mode = "magnitude" if in_chans == 1 else "complex"
        if was_set("model.mode", config.get("model.mode"), _MODULE_DEFAULTS["mode"]):
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


_NO_DEFAULT = object()


def warn_changed_acquisition(config: Any, checkpoint: Dict[str, Any], path: Path) -> None:
    """Resuming ``fit`` with another mask, noise or k-space steps than the checkpoint's run: say so, naming both.

    The run then trains on the new acquisition, and its ``last.ckpt`` records
    the new one: the checkpoint alone no longer tells what the weights saw.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    recorded = hparams.get("acquisition") if isinstance(hparams.get("acquisition"), dict) else {}
    data_state = checkpoint.get("IconetDataModule") if isinstance(checkpoint.get("IconetDataModule"), dict) else {}
    before = {
        "mask": recorded.get("mask", data_state.get("mask")),
        "noise_std": recorded.get("noise_std"),
        "kspace_steps": recorded.get("kspace_steps"),
    }
    now = {
        "mask": _plain(config.get("data.mask")),
        "noise_std": config.get("data.noise_std"),
        "kspace_steps": _plain(config.get("data.kspace_steps")),
    }
    changed = []
    for key, old in before.items():
        if old is None:
            continue  # not recorded (an older checkpoint)
        new = now[key]
        if key == "kspace_steps":
            old, new = list(old or []), list(new or [])
        if isinstance(old, dict) and isinstance(new, dict):  # fields both know (a newer field is no change)
            same = all(old[k] == new[k] for k in old.keys() & new.keys())
        else:
            same = old == new
        if same:
            continue
        changed.append(f"{key}: the checkpoint's run used {_describe(old)}, you gave {_describe(new)}")
    if changed:
        rank_zero_warn(
            f"resuming {path} with another acquisition than the run that wrote it:\n  " + "\n  ".join(changed)
            + "\nThe rest of the run trains on yours, and last.ckpt will record yours only. To keep the two "
            "apart, start a new run folder (--trainer.default_root_dir) from these weights instead."
        )


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:
        args = {k: v for k, v in value.items() if k != "name" and v not in (None, {}, [])}
        return f"{value['name']!r} {json.dumps(args, sort_keys=True)}" if args else repr(value["name"])
    return repr(value)


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
