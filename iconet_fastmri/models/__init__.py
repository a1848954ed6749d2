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
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Mapping

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
]

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


def model_from_spec(spec: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild a model from :func:`model_spec`'s dict (e.g. a checkpoint's ``hyper_parameters["model"]``).

    Only registered classes are built: ``class_path`` must be the class path
    (or the short name) of an entry of :data:`MODELS`; anything else is a
    ``ValueError`` and nothing is imported. ``overrides`` replace init args.
    """
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"a model spec is a dict with 'class_path' and 'init_args', got {spec!r}")
    name = registered_name(spec["class_path"])
    init_args = dict(spec.get("init_args") or {})
    if not all(isinstance(k, str) for k in init_args):
        raise ValueError(f"model init_args must have string keys, got {list(init_args)}")
    init_args.update(overrides)
    return build_model(name, **init_args)
