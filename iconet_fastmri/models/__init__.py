"""Models: ICONet, its baselines, and an explicit registry.

``build_model(name, **kwargs)`` builds a registered model. Built-in names:
``"iconet"``, ``"bicubic"``, ``"sinc"``, ``"unet_sr"``, ``"t2net_like"``.
Other packages can add models without touching this file, either by calling
:func:`register_model` or through the entry-point group
``iconet_fastmri.models`` (``name = "package.module:ModelClass"``), which is
consulted when a name is not registered.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Dict, List

from torch import nn

from .baselines import BicubicSR, SincSR, T2NetLike, UnetSR
from .blocks import RSCFL, LayerNorm2d, ResBlock
from .fusion import AdaptiveFusion, ConcatFusion, NoFusion
from .iconet import ICONet, IconetOutput

__all__ = [
    "ICONet",
    "IconetOutput",
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
    "MODEL_REGISTRY",
    "ENTRY_POINT_GROUP",
    "register_model",
    "available_models",
    "build_model",
]

#: Entry-point group that third-party packages can use to register models.
ENTRY_POINT_GROUP = "iconet_fastmri.models"

#: Name -> model constructor.
MODEL_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "iconet": ICONet,
    "bicubic": BicubicSR,
    "sinc": SincSR,
    "unet_sr": UnetSR,
    "t2net_like": T2NetLike,
}


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Register a model constructor under ``name`` (an existing name is an error)."""
    if name in MODEL_REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    MODEL_REGISTRY[name] = constructor


def _load_entry_point(name: str) -> bool:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            MODEL_REGISTRY[name] = entry.load()
            return True
    return False


def available_models() -> List[str]:
    """Names of the registered models (entry points included)."""
    names = set(MODEL_REGISTRY)
    names.update(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name, e.g. ``"iconet"``.
        **kwargs: constructor arguments of that model.

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    if name not in MODEL_REGISTRY and not _load_entry_point(name):
        raise ValueError(f"unknown model {name!r}; available models are {available_models()}")
    return MODEL_REGISTRY[name](**kwargs)
