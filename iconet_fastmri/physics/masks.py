"""Undersampling masks for the LR grid: a registry researchers extend.

A *mask function* is called as ``mask_func((h, w), seed=None)`` and returns
``(mask, num_low_frequencies)``:

* ``mask`` is a float32 tensor of shape ``(h, w)`` with 1 where a k-space
  sample is acquired, in our native-complex layout (rows = readout, dim -2;
  columns = phase encode, dim -1). 1D Cartesian masks select columns, as in
  fastMRI.
* ``num_low_frequencies`` is the size of the fully sampled centre along the
  phase-encode direction (for 2D masks: the calibration width).

Seeding (the one rule, used everywhere):

* ``seed=None`` draws from the mask function's own ``numpy`` RandomState
  (``mask_func.rng``), which is what training uses. Data loader workers and
  DDP ranks reseed it through :meth:`MaskFunction.reseed` (see
  :func:`worker_seed`), so masks differ across workers and ranks.
* An explicit ``seed`` gives the same mask every time without touching
  ``rng``. Validation and test use :func:`mask_seed` ``(fname, slice_num)``,
  which is stable across runs, processes, worker counts and ranks (unlike
  Python's salted ``hash``).

Built-in masks:

========================  ===================================================
``random``                fastMRI ``RandomMaskFunc`` (1D, random columns)
``equispaced``            fastMRI ``EquiSpacedMaskFunc``
``equispaced_fraction``   fastMRI ``EquispacedMaskFractionFunc``
``magic``                 fastMRI ``MagicMaskFunc``
``magic_fraction``        fastMRI ``MagicMaskFractionFunc``
``poisson``               2D variable-density Poisson disc (``sigpy.mri.poisson``)
``gaussian1d``            1D variable-density Gaussian column selection
``gaussian2d``            2D variable-density Gaussian point selection
``radial``                radial spokes rasterised on the Cartesian grid
``file``                  a fixed mask from ``.npy`` or ``.h5``
========================  ===================================================

Every mask except ``file`` samples its centre fully: the fastMRI masks a
band of ``round(center_fraction * w)`` columns, the 2D masks a
``round(cf * h) x round(cf * w)`` block (at least 2x2).

Extending: a factory is a class or function whose ``factory(**kwargs)``
returns a :class:`MaskFunction` (or any callable with the same call
signature). Name it by its dotted path on the command line or in a config
(``--data.mask.name my_masks.EveryOtherLine``: the training script imports
your module; see :mod:`iconet_fastmri.registry` for where it is looked for
and why a checkpoint can never make us import one), give it a short name
with ``register_mask("mine", factory)``, or, from another installed
package, expose it as an entry point in the group ``iconet_fastmri.masks``.

Acceleration: :class:`MaskConfig`'s ``accelerations`` (like
``center_fractions``, ``seed`` and ``path``) reach only a factory that takes
them, and only then is the mask checked at start-up against that R
(:func:`check_mask_on_grid`) and recorded with its predictions as nominal. A
mask that takes no ``accelerations`` may declare its nominal R as a class
attribute ``nominal_acceleration``; without one it has none (its achieved R
is still measured on every slice).

The classes live in :mod:`.mask_functions`; this module holds the seeding
rules, the registry and :class:`MaskConfig`.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..registry import Registry
from .mask_functions import (
    FastMRIMask,
    FileMask,
    Gaussian1DMask,
    Gaussian2DMask,
    MaskFunction,
    MaskResult,
    PoissonMask,
    RadialMask,
    ToFastMRIMask,
    fastmri_factory,
)

__all__ = [
    "undersampled_axes",
    "check_patch_on_grid",
    "MaskFunction",
    "FastMRIMask",
    "PoissonMask",
    "Gaussian1DMask",
    "Gaussian2DMask",
    "RadialMask",
    "FileMask",
    "ToFastMRIMask",
    "MASKS",
    "MaskConfig",
    "available_masks",
    "create_mask",
    "register_mask",
    "mask_seed",
    "eval_mask_seed",
    "MASK_SEED_RULES",
    "worker_seed",
    "effective_acceleration",
    "check_mask_on_grid",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "iconet_fastmri.masks"


def mask_seed(fname: str, slice_num: int) -> int:
    """Deterministic mask seed for one slice: CRC-32 of ``"<fname>/<slice>"``.

    Only the file *name* counts (not its folder), so moving the data does not
    change the masks.
    """
    key = f"{Path(str(fname)).name}/{int(slice_num)}".encode("utf-8")
    return zlib.crc32(key) & 0xFFFFFFFF


#: How validation/test masks are seeded: ``"slice"`` (ours, :func:`mask_seed`, a
#: different mask per slice) or ``"volume"`` (fastMRI's ``tuple(map(ord, fname))``,
#: one mask per volume, as fastMRI's own data transforms seed their masks).
MASK_SEED_RULES = ("slice", "volume")


def eval_mask_seed(fname: str, slice_num: int, rule: str = "slice") -> Union[int, Tuple[int, ...]]:
    """The seed of a validation/test mask under ``rule`` (see :data:`MASK_SEED_RULES`)."""
    if rule == "slice":
        return mask_seed(fname, slice_num)
    if rule == "volume":
        return tuple(map(ord, Path(str(fname)).name))
    raise ValueError(f"unknown mask seed rule {rule!r}; choose one of {MASK_SEED_RULES}")


def worker_seed(base_seed: int, rank: int, worker_id: int, epoch: int = 0) -> int:
    """Seed for the training randomness of one (epoch, DDP rank, data loader worker).

    A pure function of its arguments, so a run resumed from a checkpoint draws
    the same training masks as an uninterrupted one.
    """
    key = f"{int(base_seed)}/{int(rank)}/{int(worker_id)}/{int(epoch)}".encode("utf-8")
    return zlib.crc32(key) & 0xFFFFFFFF


def effective_acceleration(mask: torch.Tensor) -> float:
    """Acceleration of a mask: grid size / number of acquired samples."""
    mask = torch.as_tensor(mask)
    acquired = float(mask.sum())
    if acquired <= 0:
        raise ValueError("the mask acquires no samples")
    return float(mask.numel()) / acquired


# --------------------------------------------------------------------------- registry

#: The mask registry (:class:`~iconet_fastmri.registry.Registry`): built-in masks,
#: :func:`register_mask` calls and the entry-point group :data:`ENTRY_POINT_GROUP`.
MASKS = Registry(
    "mask",
    ENTRY_POINT_GROUP,
    builtins={
        "random": fastmri_factory("random", "RandomMaskFunc"),
        "equispaced": fastmri_factory("equispaced", "EquiSpacedMaskFunc"),
        "equispaced_fraction": fastmri_factory("equispaced_fraction", "EquispacedMaskFractionFunc"),
        "magic": fastmri_factory("magic", "MagicMaskFunc"),
        "magic_fraction": fastmri_factory("magic_fraction", "MagicMaskFractionFunc"),
        "poisson": PoissonMask,
        "gaussian1d": Gaussian1DMask,
        "gaussian2d": Gaussian2DMask,
        "radial": RadialMask,
        "file": FileMask,
    },
)


def register_mask(name: str, factory: Callable[..., Any], overwrite: bool = False) -> None:
    """Register a mask factory under ``name``.

    Args:
        name: the name configs and the CLI use (``--data.mask.name NAME``).
        factory: called with the mask's keyword arguments, returns a mask
            function ``f((h, w), seed=None) -> (mask, num_low_frequencies)``.
        overwrite: allow replacing an existing name.
    """
    MASKS.register(name, factory, overwrite=overwrite)


def available_masks() -> List[str]:
    """Names of all registered masks, built-in and from entry points."""
    return MASKS.names()


def create_mask(name: str, **kwargs: Any) -> Callable[..., MaskResult]:
    """Create a mask function by name.

    A factory may return one of our mask functions or any
    ``fastmri.data.subsample.MaskFunc`` (so fastMRI's classes, and subclasses
    of them, register unchanged: ``register_mask("mine", MyRandomMaskFunc)``);
    the latter is adapted to our ``(h, w)`` call (:class:`FastMRIMask`).
    :class:`ToFastMRIMask` converts the other way.

    Raises:
        ValueError: unknown name (the message lists the registered names) or
            invalid arguments (named in the message).
    """
    func = MASKS.build(name, **kwargs)
    from fastmri.data.subsample import MaskFunc

    if isinstance(func, MaskFunc):
        return FastMRIMask.wrap(name, func)
    return func


def check_mask_on_grid(func: Callable[..., MaskResult], shape: Tuple[int, int], nominal: Optional[float],
                       name: str = "mask", draws: int = 8) -> float:
    """Draw ``func`` on ``shape`` (seeded) and compare its achieved acceleration with ``nominal``.

    A mask function that cannot draw on the grid (e.g. a mask file of another
    shape) raises here, at start-up. An achieved acceleration below half the
    nominal one is a ``ValueError``; one more than 10 % off is a warning that
    prints it (fastMRI's equispaced masks add the centre on top of R, so they
    land 10-20 % below it by design).

    Returns:
        The mean achieved acceleration over ``draws`` seeded draws.
    """
    achieved = float(np.mean([effective_acceleration(func(shape, seed=i)[0]) for i in range(draws)]))
    if nominal:
        ratio = achieved / float(nominal)
        message = (
            f"{name} on the LR grid {shape[0]}x{shape[1]} achieves R = {achieved:.2f} "
            f"(mean of {draws} draws), nominal R = {float(nominal):g}"
        )
        if ratio < 0.5:
            raise ValueError(f"{message}: it cannot reach its nominal acceleration on this grid")
        if abs(ratio - 1) > 0.1:
            warnings.warn(message, stacklevel=2)
    return achieved


def undersampled_axes(func: Callable[..., MaskResult], shape: Tuple[int, int], draws: int = 4) -> Tuple[bool, bool]:
    """Whether seeded draws of ``func`` on ``shape`` leave out samples along (rows, columns).

    An axis is undersampled when the mask varies along it: a 1D Cartesian
    mask (fastMRI's) varies along the columns (phase encode) only, a 2D mask
    along both, a fully sampled one along neither.
    """
    rows = cols = False
    for i in range(draws):
        mask = torch.as_tensor(func(shape, seed=i)[0], dtype=torch.float32).expand(*shape)
        rows = rows or bool((mask != mask[:1, :]).any())
        cols = cols or bool((mask != mask[:, :1]).any())
    return rows, cols


def check_patch_on_grid(func: Callable[..., MaskResult], hr_crop: Tuple[int, int],
                        patch_size: Tuple[int, int], scale: int, name: str = "mask") -> None:
    """Refuse a training patch that is narrower than the HR grid along an undersampled axis.

    Aliasing from undersampling folds the whole field of view (FOV) along each
    undersampled axis. A patch cut from the HR image and then degraded has a
    smaller FOV, so its aliasing is a different artifact from the one the
    network meets on full slices (and a patch cut after degradation holds
    aliasing whose source lies outside it). Trained on such patches the U-Net
    SR baseline fell below zero-filled bicubic on full slices
    (docs/REAL_DATA.md, "Patch training"). Patches may shrink only along fully sampled axes (the
    readout, rows, for fastMRI's 1D masks).

    Args:
        func: the mask function (drawn on the LR grid).
        hr_crop: the HR grid ``(H, W)``.
        patch_size: the HR training patch ``(ph, pw)``.
        scale: the SR factor (the mask lives on ``hr_crop / scale``).
        name: how the error names the mask.
    """
    lr_shape = (hr_crop[0] // scale, hr_crop[1] // scale)
    rows, cols = undersampled_axes(func, lr_shape)
    short = [axis for axis, under, p, n in (("rows (height)", rows, patch_size[0], hr_crop[0]),
                                             ("columns (width, phase encode)", cols, patch_size[1], hr_crop[1]))
             if under and p < n]
    if short:
        if rows and cols:
            hint = "this mask undersamples both axes, so train on full slices (no patch_size)"
        else:  # shrink only the fully sampled axis
            axis = 0 if cols else 1
            size = patch_size[axis] if patch_size[axis] < hr_crop[axis] else max(scale, hr_crop[axis] // (2 * scale) * scale)
            keep = list(hr_crop)
            keep[axis] = size
            hint = f"patch only the fully sampled {'rows' if axis == 0 else 'columns'}, e.g. patch_size {keep}"
        raise ValueError(
            f"patch_size {list(patch_size)} is smaller than hr_crop {list(hr_crop)} along the "
            f"{' and '.join(short)}, which {name} undersamples: a patch with a smaller field of view has "
            f"different aliasing from a full slice, and a network trained on it does not transfer "
            f"(docs/REAL_DATA.md, 'Patch training'); {hint}"
        )


@dataclass
class MaskConfig:
    """A mask named in a config or on the command line.

    ``name`` is a registered name or a dotted path to your own factory
    (``my_masks.EveryOtherLine``; imported only when your own command names
    it, see :mod:`iconet_fastmri.registry`). ``center_fractions``,
    ``accelerations``, ``seed`` and ``path`` are passed to masks that take
    them; ``options`` holds any other argument (for example
    ``{"std_fraction": 0.3}`` or ``{"key": "mask"}``), passed strictly.

    Example (YAML)::

        mask:
          name: poisson
          center_fractions: [0.08]
          accelerations: [6]
    """

    name: str = "random"
    center_fractions: List[float] = field(default_factory=lambda: [0.08])
    accelerations: List[float] = field(default_factory=lambda: [4.0])
    seed: Optional[int] = None
    path: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> Dict[str, Any]:
        """The keyword arguments this config passes to the mask's factory."""
        accepted = MASKS.accepted_kwargs(self.name)
        candidates = {
            "center_fractions": self.center_fractions,
            "accelerations": self.accelerations,
            "seed": self.seed,
            "path": self.path,
        }
        kwargs = {
            k: v for k, v in candidates.items() if (accepted is None or k in accepted) and v is not None
        }
        if self.name == "file" and self.path is None:
            raise ValueError("mask 'file' needs a path (--data.mask.path FILE.npy|FILE.h5)")
        kwargs.update(self.options)
        return kwargs

    def build(self) -> Callable[..., MaskResult]:
        """Create the mask function."""
        return create_mask(self.name, **self.kwargs())

    def nominal_acceleration(self) -> Optional[float]:
        """The nominal acceleration R on the LR grid, ``None`` where there is none.

        The first configured acceleration if the mask's factory takes
        ``accelerations`` (it was told that R); otherwise the factory's own
        ``nominal_acceleration`` class attribute, if it declares one. ``None``
        for ``file`` masks and for masks that neither take nor declare an R
        (the demo's ``accelerations: [4]`` says nothing about such a mask).
        """
        if self.name == "file":
            return None
        accepted = MASKS.accepted_kwargs(self.name)
        if accepted is None or "accelerations" in accepted:
            return float(self.accelerations[0]) if self.accelerations else None
        declared = getattr(MASKS.get(self.name), "nominal_acceleration", None)
        if isinstance(declared, (int, float)) and not isinstance(declared, bool) and declared > 0:
            return float(declared)
        return None
