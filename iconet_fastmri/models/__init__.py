"""Models: ICONet, its baselines, the shared model contract, and the model registry.

Every model is an :class:`~.common.SRModel` (LR image in, :class:`~.common.SROutput`
out; see :mod:`.common`). The Lightning module takes a model object, so a
config names one by class path (``model.model.class_path: iconet_fastmri.models.ICONet``)
or by its short class name. :data:`MODELS` maps short names to the classes
(``"iconet"``, ``"bicubic"``, ``"sinc"``, ``"unet_sr"``, ``"t2net_like"``) for
scripts and for rebuilding a model from a checkpoint: a checkpoint can only
name a registered class, never import code of its own choosing. Other
packages add models with :func:`register_model` or through the entry-point
group ``iconet_fastmri.models``.

A spec (a checkpoint's, or anyone's) is size-checked before anything is
allocated: :func:`check_model_spec` builds the model on PyTorch's ``meta``
device (shapes, no memory) and counts its parameters and buffers, stopping
as soon as they pass :data:`DEFAULT_MAX_MODEL_PARAMETERS` (or the module
count passes :data:`DEFAULT_MAX_MODEL_MODULES`); :func:`model_from_spec`
calls it first.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from torch import nn

from ..registry import Registry
from .baselines import BicubicSR, SincSR, T2NetLike, UnetSR
from .blocks import RSCFL, LayerNorm2d, ResBlock
from .common import SRModel, SROutput
from .fusion import AdaptiveFusion, ConcatFusion, NoFusion
from .iconet import ICONet

__all__ = [
    "ICONet",
    "SRModel",
    "SROutput",
    "BicubicSR",
    "SincSR",
    "UnetSR",
    "T2NetLike",
    "RSCFL",
    "ResBlock",
    "LayerNorm2d",
    "AdaptiveFusion",
    "ConcatFusion",
    "NoFusion",
    "MODELS",
    "ENTRY_POINT_GROUP",
    "register_model",
    "available_models",
    "build_model",
    "model_spec",
    "model_from_spec",
    "registered_name",
    "check_model_spec",
    "ModelTooLargeError",
    "DEFAULT_MAX_MODEL_PARAMETERS",
    "DEFAULT_MAX_MODEL_MODULES",
]

#: Most parameters + buffers a model built from a spec may have: 2**28 (1 GiB of
#: float32). ICONet at its paper width (64) has about 2 million.
DEFAULT_MAX_MODEL_PARAMETERS = 2**28
#: Most submodules a model built from a spec may register (ICONet: 533 at scale 8, ~2000 with 16 blocks per stage):
#: bounds a spec declaring millions of small blocks, which no parameter count would stop in time.
DEFAULT_MAX_MODEL_MODULES = 2**14

#: Entry-point group that third-party packages can use to register models.
ENTRY_POINT_GROUP = "iconet_fastmri.models"

#: The model registry (:class:`~iconet_fastmri.registry.Registry`).
MODELS = Registry(
    "model",
    ENTRY_POINT_GROUP,
    builtins={
        "iconet": ICONet,
        "bicubic": BicubicSR,
        "sinc": SincSR,
        "unet_sr": UnetSR,
        "t2net_like": T2NetLike,
    },
)


def register_model(name: str, constructor: Any, overwrite: bool = False) -> None:
    """Register a model class under ``name`` (an existing name is an error unless ``overwrite``)."""
    MODELS.register(name, constructor, overwrite=overwrite)


def available_models() -> List[str]:
    """Names of the registered models (entry points included)."""
    return MODELS.names()


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name; unknown names and arguments are ``ValueError``."""
    return MODELS.build(name, **kwargs)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def model_spec(model: nn.Module) -> Dict[str, Any]:
    """``{"class_path", "init_args"}`` of a model: what a checkpoint stores to rebuild it.

    The model's class must be registered (:data:`MODELS`) and the model an
    :class:`~.common.SRModel` (which records its constructor arguments).
    """
    if not isinstance(model, SRModel):
        raise TypeError(
            f"{type(model).__name__} is not an SRModel: derive it from "
            f"iconet_fastmri.models.SRModel so that checkpoints can record how to rebuild it"
        )
    return {"class_path": _class_path(type(model)), "init_args": model.init_args}


def registered_name(class_path: Any) -> str:
    """The registry name of a class path (``"iconet_fastmri.models.ICONet"``, ``"ICONet"`` or ``"iconet"``).

    Raises:
        ValueError: the class is not registered (nothing is imported).
    """
    classes = {n: MODELS.get(n) for n in MODELS.names()}
    # A dotted path names an attribute of a module that is already imported
    # (``sys.modules`` only: nothing is imported on a checkpoint's say-so).
    found = None
    if isinstance(class_path, str) and "." in class_path:
        module_name, _, attr = class_path.rpartition(".")
        found = getattr(sys.modules.get(module_name), attr, None)
    for name, cls in classes.items():
        if class_path == name or (
            isinstance(cls, type)
            and (class_path in (cls.__name__, _class_path(cls)) or (found is not None and found is cls))
        ):
            return name
    raise ValueError(
        f"model class {class_path!r} is not a registered model ({', '.join(sorted(classes))}); "
        f"register it with iconet_fastmri.models.register_model before loading"
    )


class ModelTooLargeError(ValueError):
    """A model spec that declares more parameters or modules than allowed (raised before allocating)."""


_BUILD_GUARD = threading.local()


def _on_parameter(module: nn.Module, name: str, value: Any) -> None:
    guard = getattr(_BUILD_GUARD, "active", None)
    if guard is not None and value is not None:
        guard.add_tensor(value)


def _on_module(module: nn.Module, name: str, value: Any) -> None:
    guard = getattr(_BUILD_GUARD, "active", None)
    if guard is not None and value is not None:
        guard.add_module()


class _SizeGuard:
    """Counts the parameters/buffers/modules registered by this thread and stops the build past the limits."""

    def __init__(self, max_parameters: int, max_modules: int) -> None:
        self.max_parameters, self.max_modules = int(max_parameters), int(max_modules)
        self.parameters = self.modules = 0

    def add_tensor(self, value: Any) -> None:
        self.parameters += int(value.numel()) if isinstance(value, torch.Tensor) else 0
        if self.parameters > self.max_parameters:
            raise ModelTooLargeError(f"more than {self.parameters} parameters, above the limit of {self.max_parameters}")

    def add_module(self) -> None:
        self.modules += 1
        if self.modules > self.max_modules:
            raise ModelTooLargeError(f"more than {self.max_modules} modules, above the limit of {self.max_modules}")

    def __enter__(self) -> "_SizeGuard":
        from torch.nn.modules import module as torch_module

        self._previous = getattr(_BUILD_GUARD, "active", None)
        _BUILD_GUARD.active = self
        self._handles = [
            torch_module.register_module_parameter_registration_hook(_on_parameter),
            torch_module.register_module_buffer_registration_hook(_on_parameter),
            torch_module.register_module_module_registration_hook(_on_module),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        _BUILD_GUARD.active = self._previous


def _spec_parts(spec: Mapping[str, Any], overrides: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"a model spec is a dict with 'class_path' and 'init_args', got {spec!r}")
    name = registered_name(spec["class_path"])
    init_args = dict(spec.get("init_args") or {})
    if not all(isinstance(k, str) for k in init_args):
        raise ValueError(f"model init_args must have string keys, got {list(init_args)}")
    init_args.update(overrides)
    return name, init_args


def _describe(name: str, init_args: Mapping[str, Any]) -> str:
    """``ICONet(width=40000)``: the class and the arguments that differ from its defaults."""
    import inspect

    cls = MODELS.get(name)
    try:
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    except (TypeError, ValueError):
        defaults = {}
    shown = ", ".join(f"{k}={v!r}" for k, v in init_args.items() if k not in defaults or defaults[k] != v)
    return f"{getattr(cls, '__name__', name)}({shown})"


def check_model_spec(
    spec: Mapping[str, Any],
    max_parameters: int = DEFAULT_MAX_MODEL_PARAMETERS,
    where: Optional[str] = None,
    max_modules: int = DEFAULT_MAX_MODEL_MODULES,
    **overrides: Any,
) -> int:
    """Size-check a model spec without allocating: returns its parameter + buffer count.

    The model is built on PyTorch's ``meta`` device (shapes only), counting
    every parameter, buffer and submodule as it is registered; past
    ``max_parameters`` or ``max_modules`` the build stops at once. Call it
    before building a model that a file declares (a checkpoint's
    ``hyper_parameters["model"]``, with the init args that will be used).

    Args:
        spec: ``{"class_path", "init_args"}`` (:func:`model_spec`).
        max_parameters: limit on parameters + buffers (:data:`DEFAULT_MAX_MODEL_PARAMETERS`).
        where: names the source in the error (e.g. ``"checkpoint run/last.ckpt"``).
        max_modules: limit on registered submodules (:data:`DEFAULT_MAX_MODEL_MODULES`).
        overrides: init args replacing the spec's.

    Raises:
        ModelTooLargeError: (a ``ValueError``) naming the source, the class, its
            non-default arguments and the limit.
        ValueError: unregistered class or bad init args.
    """
    name, init_args = _spec_parts(spec, overrides)
    prefix = f"{where}: " if where else ""
    guard = _SizeGuard(max_parameters, max_modules)
    try:
        with guard, torch.device("meta"):
            model = build_model(name, **init_args)
    except ModelTooLargeError as err:
        raise ModelTooLargeError(
            f"{prefix}model {_describe(name, init_args)} declares {err}; refusing to build it "
            f"(a checkpoint or config from elsewhere? check its model arguments)"
        ) from None
    except (NotImplementedError, RuntimeError):  # a constructor that cannot run on the meta device: the count alone
        guard = _SizeGuard(max_parameters, max_modules)
        try:
            with guard:
                model = build_model(name, **init_args)
        except ModelTooLargeError as err:
            raise ModelTooLargeError(
                f"{prefix}model {_describe(name, init_args)} declares {err}; refusing to build it"
            ) from None
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def model_from_spec(
    spec: Mapping[str, Any], *, max_parameters: int = DEFAULT_MAX_MODEL_PARAMETERS, **overrides: Any
) -> nn.Module:
    """Rebuild a model from :func:`model_spec`'s dict (e.g. a checkpoint's ``hyper_parameters["model"]``).

    Only registered classes are built: ``class_path`` must be the class path
    (or the short name) of an entry of :data:`MODELS`; anything else is a
    ``ValueError`` and nothing is imported. ``overrides`` replace init args.
    The spec is size-checked first (:func:`check_model_spec`, at most
    ``max_parameters``), so a spec declaring a huge model is refused before
    any memory is allocated.
    """
    name, init_args = _spec_parts(spec, overrides)
    check_model_spec({"class_path": name, "init_args": init_args}, max_parameters=max_parameters)
    return build_model(name, **init_args)
