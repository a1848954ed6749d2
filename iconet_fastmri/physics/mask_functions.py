"""The mask functions: fastMRI's 1D masks (wrapped) and our 2D masks.

Each class here is a mask function as :mod:`.masks` defines it, called as
``mask_func((h, w), seed=None) -> (mask, num_low_frequencies)``, with its own
``numpy`` RandomState for training draws and an explicit ``seed`` for
deterministic ones. :mod:`.masks` registers them by name.

The module is long because it holds every built-in mask side by side (fastMRI's
wrapped 1D masks, Poisson disc, Gaussian 1D/2D, radial, file): they share one
seeding and centre-sampling contract, which is easiest to check across them here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .poisson import bounded_poisson

__all__ = [
    "MaskResult",
    "MaskFunction",
    "FastMRIMask",
    "PoissonMask",
    "Gaussian1DMask",
    "Gaussian2DMask",
    "RadialMask",
    "FileMask",
    "DEFAULT_MAX_MASK_ELEMENTS",
    "fastmri_factory",
    "ToFastMRIMask",
]

MaskResult = Tuple[torch.Tensor, int]

#: Most entries a mask file may declare: a 4096 x 4096 LR grid (the LR grid of the
#: largest HR grid the data module accepts, 2**26 pixels, at scale 2). Checked
#: from the file's header, before the array is read.
DEFAULT_MAX_MASK_ELEMENTS = 2**24


def _check_shape(shape: Sequence[int]) -> Tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"mask shape needs at least 2 dimensions (h, w), got {tuple(shape)}")
    h, w = int(shape[-2]), int(shape[-1])
    if h < 1 or w < 1:
        raise ValueError(f"invalid mask shape {tuple(shape)}")
    return h, w


def _as_list(values: Union[float, Sequence[float]], what: str) -> List[float]:
    if isinstance(values, (int, float)):
        values = [values]
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{what} must not be empty")
    return values


def _check_accelerations(accelerations: Sequence[float]) -> List[float]:
    accelerations = _as_list(accelerations, "accelerations")
    for r in accelerations:
        if not r > 1:
            raise ValueError(
                f"acceleration {r} is not > 1: an undersampling mask must skip samples "
                f"(use no mask for fully sampled LR k-space)"
            )
    return accelerations


def _check_center_fractions(center_fractions: Sequence[float]) -> List[float]:
    center_fractions = _as_list(center_fractions, "center_fractions")
    for cf in center_fractions:
        if not 0 <= cf < 1:
            raise ValueError(f"center fraction {cf} must be in [0, 1)")
    return center_fractions


def _seed_value(seed: Union[int, Sequence[int]]) -> Union[int, List[int]]:
    # numpy seeds from an int or a sequence of ints (fastMRI's tuple(map(ord, fname))).
    if isinstance(seed, (tuple, list)):
        return [int(v) & 0xFFFFFFFF for v in seed]
    return int(seed) & 0xFFFFFFFF


class MaskFunction:
    """Base class: a seeded sampler of LR-grid masks.

    Subclasses implement :meth:`sample`, which must draw all randomness from
    the ``rng`` it is given.

    Args:
        seed: seed of the function's own RandomState (used when called without a seed).
    """

    name = "base"

    def __init__(self, seed: Optional[int] = None) -> None:
        self.rng = np.random.RandomState(seed)

    def reseed(self, seed: int) -> None:
        """Reseed the RNG used for calls without a seed (training masks)."""
        self.rng.seed(int(seed) & 0xFFFFFFFF)

    def sample(self, shape: Tuple[int, int], rng: np.random.RandomState) -> Tuple[np.ndarray, int]:
        raise NotImplementedError

    def __call__(self, shape: Sequence[int], seed: Optional[Union[int, Sequence[int]]] = None) -> MaskResult:
        """Draw a mask; ``seed`` is an int or, as fastMRI's transforms pass it, a tuple of ints."""
        h, w = _check_shape(shape)
        rng = self.rng if seed is None else np.random.RandomState(_seed_value(seed))
        mask, num_low = self.sample((h, w), rng)
        mask = np.array(np.broadcast_to(np.asarray(mask, dtype=np.float32), (h, w)))
        return torch.from_numpy(mask), int(num_low)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _AccelMask(MaskFunction):
    """A mask with (center_fractions, accelerations) chosen per call, paired by index."""

    def __init__(
        self,
        center_fractions: Sequence[float] = (0.08,),
        accelerations: Sequence[float] = (4,),
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(seed)
        self.center_fractions = _check_center_fractions(center_fractions)
        self.accelerations = _check_accelerations(accelerations)
        if len(self.center_fractions) != len(self.accelerations):
            raise ValueError(
                f"center_fractions {self.center_fractions} and accelerations "
                f"{self.accelerations} must have the same length (they are paired)"
            )

    def choose(self, rng: np.random.RandomState) -> Tuple[float, float]:
        choice = rng.randint(len(self.accelerations))
        return self.center_fractions[choice], self.accelerations[choice]


# --------------------------------------------------------------------------- fastMRI


class FastMRIMask(MaskFunction):
    """A :mod:`fastmri.data.subsample` mask function on our layout.

    The fastMRI function is called with a shape whose columns (``shape[-2]``
    in fastMRI's real view) are our phase-encode columns; its column mask is
    broadcast over the rows. Seeds are passed through unchanged, so the same
    seed gives the same mask as fastMRI itself.
    """

    def __init__(
        self,
        name: str,
        cls: type,
        center_fractions: Sequence[float] = (0.08,),
        accelerations: Sequence[float] = (4,),
        allow_any_combination: bool = False,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(seed)
        self.name = name
        center_fractions = _check_center_fractions(center_fractions)
        accelerations = _check_accelerations(accelerations)
        if not allow_any_combination and len(center_fractions) != len(accelerations):
            raise ValueError(
                f"center_fractions {center_fractions} and accelerations {accelerations} must have "
                f"the same length unless allow_any_combination=True"
            )
        if name.startswith(("equispaced", "magic")):
            for r in accelerations:
                if r != int(r):
                    raise ValueError(f"mask {name!r} needs integer accelerations, got {r}")
            accelerations = [int(r) for r in accelerations]
        self.center_fractions = center_fractions
        self.accelerations = accelerations
        self.fastmri_func = cls(
            center_fractions=center_fractions,
            accelerations=accelerations,
            allow_any_combination=allow_any_combination,
            seed=seed,
        )
        # One RandomState shared with fastMRI, so reseed() reaches it.
        self.rng = self.fastmri_func.rng

    @classmethod
    def wrap(cls, name: str, fastmri_func: Any) -> "FastMRIMask":
        """Adopt an existing ``fastmri.data.subsample.MaskFunc`` (any subclass, e.g. a user's own)."""
        self = cls.__new__(cls)
        self.name = name
        self.fastmri_func = fastmri_func
        self.center_fractions = list(getattr(fastmri_func, "center_fractions", []))
        self.accelerations = list(getattr(fastmri_func, "accelerations", []))
        self.rng = fastmri_func.rng
        return self

    def __call__(self, shape: Sequence[int], seed: Optional[Union[int, Sequence[int]]] = None) -> MaskResult:
        h, w = _check_shape(shape)
        try:
            mask, num_low = self.fastmri_func((1, h, w, 2), seed=seed)
        except ValueError as err:
            if "high <= 0" in str(err):  # fastMRI issue #344
                raise ValueError(
                    f"mask {self.name!r} cannot reach accelerations {self.accelerations} with "
                    f"center_fractions {self.center_fractions} on {w} columns: the centre band "
                    f"alone is at least w/R columns; lower the center fraction or the acceleration"
                ) from err
            raise
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.numel() == w:  # 1D: a column pattern, broadcast over the rows
            return mask.reshape(1, w).expand(h, w).contiguous(), int(num_low)
        return mask.reshape(h, w).contiguous(), int(num_low)


class ToFastMRIMask:
    """One of our mask functions called the fastMRI way, e.g. by ``fastmri.data.transforms.apply_mask``.

    ``func(shape, offset=None, seed=None)`` with ``shape = (..., H, W, 2)``
    (fastMRI's real view) returns ``(mask, num_low_frequencies)`` with
    ``mask`` of shape ``(1, ..., 1, H, W, 1)``.
    """

    def __init__(self, mask_func: Callable[..., MaskResult]) -> None:
        self.mask_func = mask_func

    def __call__(self, shape: Sequence[int], offset: Optional[int] = None,
                 seed: Optional[Union[int, Sequence[int]]] = None) -> Tuple[torch.Tensor, int]:
        if len(shape) < 3:
            raise ValueError(f"fastMRI mask shapes are (..., H, W, 2), got {tuple(shape)}")
        h, w = int(shape[-3]), int(shape[-2])
        mask, num_low = self.mask_func((h, w), seed=seed)
        return mask.reshape(*([1] * (len(shape) - 3)), h, w, 1), int(num_low)


def fastmri_factory(name: str, cls_name: str) -> Callable[..., MaskFunction]:
    def factory(
        center_fractions: Sequence[float] = (0.08,),
        accelerations: Sequence[float] = (4,),
        allow_any_combination: bool = False,
        seed: Optional[int] = None,
    ) -> MaskFunction:
        from fastmri.data import subsample

        return FastMRIMask(
            name,
            getattr(subsample, cls_name),
            center_fractions=center_fractions,
            accelerations=accelerations,
            allow_any_combination=allow_any_combination,
            seed=seed,
        )

    factory.__name__ = f"{name}_mask"
    factory.__doc__ = f"fastMRI ``{cls_name}`` on the LR grid."
    return factory


# --------------------------------------------------------------------------- 2D and VD masks


def _calibration(h: int, w: int, cf: float) -> Tuple[int, int]:
    return max(2, int(round(cf * h))), max(2, int(round(cf * w)))


def _centre_slice(full: int, part: int) -> slice:
    start = full // 2 - part // 2  # DC-aligned, as in iconet_fastmri.physics.degradation
    return slice(start, start + part)


class PoissonMask(_AccelMask):
    """Variable-density Poisson-disc 2D mask (``sigpy.mri.poisson``) with a calibration block.

    The acceleration is met within ``tol`` (sigpy's tolerance, default 0.1)
    on the whole grid; corners outside the inscribed ellipse are not sampled
    (``crop_corner``).
    """

    name = "poisson"

    def __init__(
        self,
        center_fractions: Sequence[float] = (0.08,),
        accelerations: Sequence[float] = (4,),
        crop_corner: bool = True,
        tol: float = 0.1,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(center_fractions, accelerations, seed)
        self.crop_corner = crop_corner
        self.tol = tol

    #: Bisection steps on the density slope before the closest mask is kept.
    MAX_STEPS = 40

    def sample(self, shape, rng):
        h, w = shape
        cf, r = self.choose(rng)
        calib = _calibration(h, w, cf)
        mask = bounded_poisson((h, w), r, calib, self.crop_corner, self.tol,
                                int(rng.randint(0, 2**31 - 1)), self.MAX_STEPS)
        mask[_centre_slice(h, calib[0]), _centre_slice(w, calib[1])] = 1.0
        return mask, calib[1]


class _GaussianDensityMask(_AccelMask):
    """Shared arguments of the Gaussian variable-density masks.

    Args:
        std_fraction: standard deviation of the Gaussian density as a fraction
            of the grid size along each sampled axis.
    """

    def __init__(
        self,
        center_fractions: Sequence[float] = (0.08,),
        accelerations: Sequence[float] = (4,),
        std_fraction: float = 0.25,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(center_fractions, accelerations, seed)
        if std_fraction <= 0:
            raise ValueError(f"std_fraction must be > 0, got {std_fraction}")
        self.std_fraction = std_fraction



class Gaussian1DMask(_GaussianDensityMask):
    """1D variable density: a centre band plus columns drawn with Gaussian weights.

    Exactly ``round(w / R)`` columns are acquired (at least the centre band).
    """

    name = "gaussian1d"

    def sample(self, shape, rng):
        h, w = shape
        cf, r = self.choose(rng)
        num_low = max(1, int(round(cf * w)))
        columns = np.zeros(w, dtype=np.float32)
        columns[_centre_slice(w, num_low)] = 1
        remaining = max(0, int(round(w / r)) - num_low)
        free = np.flatnonzero(columns == 0)
        if remaining > 0 and free.size:
            dist = free - w // 2
            weight = np.exp(-0.5 * (dist / (self.std_fraction * w)) ** 2)
            picked = rng.choice(free, size=min(remaining, free.size), replace=False, p=weight / weight.sum())
            columns[picked] = 1
        return np.broadcast_to(columns, (h, w)), num_low


class Gaussian2DMask(_GaussianDensityMask):
    """2D variable density: a calibration block plus points drawn with 2D Gaussian weights.

    Exactly ``round(h * w / R)`` samples are acquired (at least the block).
    """

    name = "gaussian2d"

    def sample(self, shape, rng):
        h, w = shape
        cf, r = self.choose(rng)
        calib = _calibration(h, w, cf)
        mask = np.zeros((h, w), dtype=np.float32)
        mask[_centre_slice(h, calib[0]), _centre_slice(w, calib[1])] = 1
        remaining = int(round(h * w / r)) - int(mask.sum())
        free = np.flatnonzero(mask.ravel() == 0)
        if remaining > 0 and free.size:
            rows, cols = np.divmod(free, w)
            dy = (rows - h // 2) / (self.std_fraction * h)
            dx = (cols - w // 2) / (self.std_fraction * w)
            weight = np.exp(-0.5 * (dx**2 + dy**2))
            picked = rng.choice(free, size=min(remaining, free.size), replace=False, p=weight / weight.sum())
            mask.ravel()[picked] = 1
        return mask, calib[1]


class RadialMask(_AccelMask):
    """Radial spokes through the k-space centre, rasterised on the Cartesian grid.

    The number of equally spaced spokes (with a random rotation per draw) is
    the one whose rasterised coverage is closest to ``1 / R``, counting a
    fully sampled calibration block of ``round(cf * h) x round(cf * w)``.
    """

    name = "radial"

    def __init__(
        self,
        center_fractions: Sequence[float] = (0.04,),
        accelerations: Sequence[float] = (4,),
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(center_fractions, accelerations, seed)

    @staticmethod
    def _raster(h: int, w: int, spokes: int, rotation: float, calib: Tuple[int, int]) -> np.ndarray:
        mask = np.zeros((h, w), dtype=np.float32)
        mask[_centre_slice(h, calib[0]), _centre_slice(w, calib[1])] = 1
        angles = rotation + np.pi * np.arange(spokes) / spokes
        half = 0.5 * math.hypot(h, w)
        t = np.arange(-half, half + 0.25, 0.25)
        rows = np.rint(h // 2 + np.outer(np.sin(angles), t)).astype(np.int64).ravel()
        cols = np.rint(w // 2 + np.outer(np.cos(angles), t)).astype(np.int64).ravel()
        keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        mask[rows[keep], cols[keep]] = 1
        return mask

    def sample(self, shape, rng):
        h, w = shape
        cf, r = self.choose(rng)
        calib = _calibration(h, w, cf)
        rotation = rng.uniform(0, np.pi)
        target = h * w / r
        lo, hi = 1, 4 * max(h, w)
        while lo < hi:  # smallest spoke count reaching the target coverage
            mid = (lo + hi) // 2
            if self._raster(h, w, mid, rotation, calib).sum() < target:
                lo = mid + 1
            else:
                hi = mid
        best = min(
            (max(1, lo - 1), lo),
            key=lambda n: abs(self._raster(h, w, n, rotation, calib).sum() - target),
        )
        return self._raster(h, w, best, rotation, calib), calib[1]


class FileMask(MaskFunction):
    """A fixed mask from a ``.npy`` file or an HDF5 dataset (``key``, default ``"mask"``).

    A 1D mask of length ``w`` selects columns and is broadcast over the rows;
    a 2D mask must match the LR grid ``(h, w)`` exactly. Values must be 0 or 1.
    A file declaring more than ``max_elements`` entries
    (:data:`DEFAULT_MAX_MASK_ELEMENTS`) is refused from its header, before
    the array is read.
    """

    name = "file"

    def __init__(self, path: Union[str, Path], key: str = "mask", seed: Optional[int] = None,
                 max_elements: int = DEFAULT_MAX_MASK_ELEMENTS) -> None:
        super().__init__(seed)
        self.path = Path(path)
        self.key = key
        self.max_elements = int(max_elements)
        self.array = self._load()

    def _check_declared(self, shape: Sequence[int], what: str) -> None:
        shape = tuple(int(n) for n in shape)
        size = math.prod(shape)
        if size > self.max_elements:
            raise ValueError(
                f"mask file {str(self.path)!r}: {what} declares shape {shape} = {size} entries, above the "
                f"limit of {self.max_elements} (max_elements; a 4096x4096 LR grid by default); refusing to read it"
            )

    def _load(self) -> np.ndarray:
        path = self.path
        if not path.is_file():
            raise FileNotFoundError(f"mask file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                with open(path, "rb") as f:  # the header first: its shape is checked before any read
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, _ = np.lib.format.read_array_header_2_0(f)
                    else:  # format 3.0 (utf-8 field names): numpy's own reader of any version
                        shape, _, _ = np.lib.format._read_array_header(f, version)
                self._check_declared(shape, "its .npy header")
                array = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as err:
                if "refusing to read it" in str(err):
                    raise
                raise ValueError(f"mask file {str(path)!r} is not a readable .npy array: {err}") from err
        elif suffix in (".h5", ".hdf5"):
            import h5py

            try:
                with h5py.File(path, "r") as f:
                    if self.key not in f:
                        raise KeyError(
                            f"mask file {str(path)!r} has no dataset {self.key!r} "
                            f"(it has {sorted(f.keys())})"
                        )
                    ds = f[self.key]
                    if not isinstance(ds, h5py.Dataset):
                        raise ValueError(f"mask file {str(path)!r}: {self.key!r} is not a dataset")
                    self._check_declared(ds.shape or (), f"dataset {self.key!r}")
                    array = np.asarray(ds)
            except OSError as err:
                raise ValueError(f"mask file {str(path)!r} is not a readable HDF5 file: {err}") from err
        else:
            raise ValueError(f"mask file {str(path)!r}: expected a .npy or .h5 file")
        array = np.squeeze(np.asarray(array))
        if array.ndim not in (1, 2):
            raise ValueError(f"mask file {str(path)!r} holds an array of shape {array.shape}; expected (w,) or (h, w)")
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"mask file {str(path)!r} holds values other than 0 and 1")
        if array.sum() == 0:
            raise ValueError(f"mask file {str(path)!r} acquires no samples")
        return array.astype(np.float32)

    def sample(self, shape, rng):
        h, w = shape
        array = self.array
        if array.ndim == 1:
            if array.shape[0] != w:
                raise ValueError(
                    f"mask file {str(self.path)!r} has {array.shape[0]} columns but the LR grid is {h}x{w}"
                )
            columns = array
        else:
            if array.shape != (h, w):
                raise ValueError(
                    f"mask file {str(self.path)!r} has shape {array.shape} but the LR grid is {(h, w)}"
                )
            columns = array.all(axis=0).astype(np.float32)
        # Fully sampled centre columns: the contiguous run around the centre.
        num_low = 0
        c = w // 2
        if columns[c]:
            lo = hi = c
            while lo - 1 >= 0 and columns[lo - 1]:
                lo -= 1
            while hi + 1 < w and columns[hi + 1]:
                hi += 1
            num_low = hi - lo + 1
        return np.broadcast_to(array, (h, w)), num_low
