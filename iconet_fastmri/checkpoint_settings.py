"""What a checkpoint may decide for a CLI run, against what the user typed.

A checkpoint given with ``--ckpt_path`` supplies the model's architecture (a
registered class and its init args) where the user gave none; a value the
user typed (command line or config file, even one equal to the default) that
conflicts with it is an error naming both (:func:`adopt_checkpoint_architecture`,
:func:`typed_settings`). Resuming with another acquisition is a warning
(:func:`warn_changed_acquisition`). Every other hyperparameter comes from the user.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

from jsonargparse import Namespace
from pytorch_lightning.utilities import rank_zero_warn

from .models import MODELS, check_model_spec, registered_name
from .pl_modules import IconetDataModule, IconetModule

try:  # parse the command line again without applying links: what the user set, defaults left out
    from jsonargparse._link_arguments import skip_apply_links as _skip_links
except ImportError:  # pragma: no cover - another jsonargparse: the option names on the command line are used
    _skip_links = None

__all__ = ["mode_channels", "typed_settings", "adopt_checkpoint_architecture", "warn_changed_acquisition"]


def mode_channels(mode: str) -> int:
    """Input channels of a ``model.mode``: 1 for magnitude, 2 for complex (real, imag)."""
    return 1 if mode == "magnitude" else 2


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
    same way against the checkpoint's scale and input channels. A model's
    ``RUNTIME_ARGS`` (how it is run, not its weights: ``UnetSR.eval_window``)
    take the user's value where one was set. Every other
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
    runtime = set(getattr(cls, "RUNTIME_ARGS", ()))  # how the network is run, not its weights: the user's wins
    for key in runtime & set(user_args):
        if was_set(f"model.model.init_args.{key}", user_args[key], defaults.get(key, _NO_DEFAULT)):
            merged[key] = user_args[key]
    for key, value in ckpt_args.items():
        if key in ("scale", "in_chans") or key in runtime or key not in user_args:
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
    check_model_spec({"class_path": name, "init_args": merged}, where=f"checkpoint {path}")  # before any allocation
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
