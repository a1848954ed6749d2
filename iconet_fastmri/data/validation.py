"""Up-front checks of fastMRI HDF5 files, with errors that name the file.

fastmri's :class:`~fastmri.data.SliceDataset` opens every entry of a folder
in its constructor and fails on a bad one with h5py/lxml errors that do not
say which file broke. We check the files first and raise
:class:`FastMRIFileError` naming the file, the key and the problem.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import h5py
import numpy as np

__all__ = [
    "FastMRIFileError",
    "validate_fastmri_file",
    "DEFAULT_MAX_SLICE_ELEMENTS",
    "ISMRMRD_NAMESPACE",
    "scan_kspace_values",
    "DEFAULT_MAX_SLICES",
    "DEFAULT_MAX_HEADER_BYTES",
    "MAX_DECLARED_TO_FILE_RATIO",
    "MAX_KSPACE_ENERGY",
    "kspace_magnitude_problem",
    "kspace_fingerprint",
    "check_grid_size",
]

log = logging.getLogger(__name__)

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
#: Largest k-space slice (coils x rows x columns) accepted by default: 2**26
#: complex samples = 512 MiB of complex64, far above any fastMRI slice (16 x 640 x 400).
DEFAULT_MAX_SLICE_ELEMENTS = 2**26
#: Most slices a file may declare. fastMRI volumes have at most a few dozen; a
#: header of a few bytes can declare 10**8, and the value scan would then run for hours.
DEFAULT_MAX_SLICES = 4096
#: Largest 'ismrmrd_header' accepted: ISMRMRD headers are a few KB (fastMRI's ~10 KB).
DEFAULT_MAX_HEADER_BYTES = 2**24
#: A file may declare at most this many times its own size of k-space. Unwritten
#: HDF5 chunks read back as fill values, so a file of a few KB can declare
#: terabytes; compression of real (noisy) k-space gains a few times at most.
MAX_DECLARED_TO_FILE_RATIO = 1000
#: Largest k-space energy sum(|k|^2) of one slice (computed in float64). By
#: Parseval it is also the energy of the slice's images, whose squares and sums
#: the pipeline computes in float32 (max 3.4e38): 1e30 (so |k| <= 1e15) leaves
#: eight decades for batch sums, losses and metrics. Real data are far below
#: (fastMRI: ~1e-3; scanner units ~1e3 per sample).
MAX_KSPACE_ENERGY = 1e30

_HEADER_FIELDS = (
    ("encoding", "encodedSpace", "matrixSize", "x"),
    ("encoding", "encodedSpace", "matrixSize", "y"),
    ("encoding", "reconSpace", "matrixSize", "x"),
    ("encoding", "reconSpace", "matrixSize", "y"),
    ("encoding", "encodingLimits", "kspace_encoding_step_1", "center"),
    ("encoding", "encodingLimits", "kspace_encoding_step_1", "maximum"),
)


class FastMRIFileError(ValueError):
    """A fastMRI HDF5 file that cannot be used; ``path`` names it."""

    def __init__(self, path: Union[str, Path], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def check_grid_size(
    hr_crop: Sequence[int], patch_size: Optional[Sequence[int]] = None,
    max_pixels: int = DEFAULT_MAX_SLICE_ELEMENTS,
) -> None:
    """Refuse an absurd ``hr_crop`` / ``patch_size`` before any mask is drawn on it.

    No image of the data has more than ``max_pixels`` (``max_slice_elements``:
    a slice holds coils x rows x columns samples), so a larger grid could only
    fail later, after allocating masks of its size (``hr_crop [100000,100000]``
    spent minutes allocating 10 GB); a patch larger than ``hr_crop`` is refused
    before masks are drawn on the patch grid.
    """
    for what, grid in (("hr_crop", hr_crop), ("patch_size", patch_size)):
        if grid is None:
            continue
        pixels = int(grid[0]) * int(grid[1])
        if pixels > max_pixels:
            raise ValueError(
                f"{what} {grid[0]}x{grid[1]} is {pixels} pixels, above max_slice_elements ({max_pixels}): "
                f"no slice of the data can be that large; refusing it before drawing masks on it"
            )
    if patch_size is not None and (patch_size[0] > hr_crop[0] or patch_size[1] > hr_crop[1]):
        raise ValueError(f"patch_size {patch_size[0]}x{patch_size[1]} is larger than hr_crop {hr_crop[0]}x{hr_crop[1]}")


def _header_int(root: ET.Element, parts: Sequence[str]) -> int:
    node: Optional[ET.Element] = root
    for part in parts:
        node = node.find(f"{{{ISMRMRD_NAMESPACE}}}{part}") if node is not None else None
    if node is None or node.text is None:
        raise KeyError("/".join(parts))
    return int(node.text.strip())


def _check_header(path: Path, raw: bytes) -> Tuple[int, int]:
    """Parse the ISMRMRD header; returns the encoded matrix size (x, y)."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        raise FastMRIFileError(path, f"dataset 'ismrmrd_header' is not valid XML ({err})") from err
    values = []
    for parts in _HEADER_FIELDS:
        try:
            values.append(_header_int(root, parts))
        except KeyError:
            raise FastMRIFileError(
                path, f"dataset 'ismrmrd_header' lacks the field {'/'.join(parts)}"
            ) from None
        except ValueError:
            raise FastMRIFileError(
                path, f"dataset 'ismrmrd_header' field {'/'.join(parts)} is not an integer"
            ) from None
    return values[0], values[1]


def _check_header_size(path: Path, ds: object, max_header_bytes: int) -> None:
    """The header's declared size, checked before it is read (its dataset can declare gigabytes)."""
    if not isinstance(ds, h5py.Dataset):
        raise FastMRIFileError(path, "'ismrmrd_header' is not a dataset")
    try:
        declared = int(ds.size) * int(ds.dtype.itemsize)
    except (TypeError, ValueError):  # a null dataspace
        declared = 0
    if declared > max_header_bytes:
        raise FastMRIFileError(
            path,
            f"dataset 'ismrmrd_header' declares {declared} bytes (shape {ds.shape}, dtype {ds.dtype}), above "
            f"the limit of {max_header_bytes} bytes (ISMRMRD headers are a few KB); refusing to read it",
        )


def _check_other_datasets(path: Path, hf: h5py.File, num_slices: int, max_slice_elements: int) -> None:
    """Shapes of the datasets fastmri's SliceDataset may read besides ``kspace``, checked before any read."""
    for key in ("reconstruction_esc", "reconstruction_rss"):
        if key not in hf:
            continue
        ds = hf[key]
        shape = tuple(int(n) for n in getattr(ds, "shape", ()) or ())
        if not isinstance(ds, h5py.Dataset) or len(shape) != 3:
            raise FastMRIFileError(path, f"dataset {key!r} has shape {shape}; expected (slices, H, W)")
        if shape[0] != num_slices or shape[1] * shape[2] > max_slice_elements:
            raise FastMRIFileError(
                path,
                f"dataset {key!r} declares shape {shape}, which does not fit {num_slices} k-space slices "
                f"of at most {max_slice_elements} samples (max_slice_elements); refusing to read it",
            )
    if "mask" in hf:
        ds = hf["mask"]
        size = int(np.prod(getattr(ds, "shape", ()) or ()))
        if not isinstance(ds, h5py.Dataset) or size > max_slice_elements:
            raise FastMRIFileError(
                path, f"dataset 'mask' declares {size} elements, above max_slice_elements; refusing to read it"
            )


def kspace_magnitude_problem(data: np.ndarray, limit: float = MAX_KSPACE_ENERGY) -> Optional[str]:
    """``None`` if the finite k-space ``data`` is small enough for float32 computations, else what is wrong.

    The slice's energy ``sum(|k|^2)`` (float64, scaled by the largest
    magnitude so that it cannot overflow itself) must not exceed ``limit``
    (:data:`MAX_KSPACE_ENERGY`): finite but huge values (e.g. k-space x 1e22)
    overflow the squares and sums of the float32 pipeline, and training then
    ends with NaN weights and "PSNR nan". The data must already be finite.
    """
    if data.size == 0:
        return None
    # Cheap bound first (this runs on every slice a worker reads): with c the largest |re| or |im|,
    # sum(|k|^2) <= 2 c^2 n. Only data near the limit pays for the exact energy below.
    parts = data.view(data.real.dtype) if np.iscomplexobj(data) and data.flags.c_contiguous else np.abs(data)
    c = float(np.max(np.abs(parts)))
    if np.isfinite(c) and 2.0 * c * c * data.size <= limit:
        return None
    mags = np.abs(data)
    peak = float(np.max(mags)) if mags.size else 0.0
    if peak == 0.0:
        return None
    if not np.isfinite(peak):  # |re + i im| overflowed the array's own float type
        energy = float("inf")
    else:
        np.divide(mags, mags.dtype.type(peak), out=mags)  # in place: memory stays one slice
        np.square(mags, out=mags)
        energy = peak * peak * float(np.sum(mags, dtype=np.float64))
    if energy <= limit:
        return None
    return (
        f"k-space energy sum(|k|^2) = {energy:.3e} (max |k| = {peak:.3e}) exceeds {limit:.0e}: "
        f"float32 computations on it (image squares, losses, PSNR) would overflow to Inf/NaN; "
        f"rescale the data"
    )


def scan_kspace_values(path: Union[str, Path]) -> None:
    """Read every k-space slice once: NaN, Inf, an all-zero slice or overflowing values are a :class:`FastMRIFileError`.

    Overflowing: :func:`kspace_magnitude_problem` (a slice energy above
    :data:`MAX_KSPACE_ENERGY`). Streams one slice at a time (memory: one
    slice). It reads the whole file, so the dataset runs it once per file and
    caches the result (keyed by the file's size and modification time).
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as hf:
            ds = hf["kspace"]
            for i in range(ds.shape[0]):
                data = ds[i]
                finite = np.isfinite(data)
                if not finite.all():
                    kind = "NaN" if np.isnan(data).any() else "Inf"
                    raise FastMRIFileError(
                        path, f"dataset 'kspace', slice {i}: {int((~finite).sum())} non-finite ({kind}) values"
                    )
                del finite
                if not np.any(data):
                    raise FastMRIFileError(path, f"dataset 'kspace', slice {i}: all zeros")
                problem = kspace_magnitude_problem(data)
                if problem is not None:
                    raise FastMRIFileError(path, f"dataset 'kspace', slice {i}: {problem}")
    except (OSError, KeyError) as err:
        raise FastMRIFileError(path, f"dataset 'kspace' cannot be read ({err})") from err


def kspace_fingerprint(path: Union[str, Path]) -> str:
    """A cheap content fingerprint of a file's k-space: shape, dtype and the centre row of its middle slice.

    Reads one k-space row (all coils), not the file: two copies of one volume
    (under any names) share it, distinct volumes practically never do. Used to
    warn when the same volume is in two splits.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as hf:
            ds = hf["kspace"]
            shape = tuple(int(n) for n in ds.shape)
            row = np.ascontiguousarray(ds[shape[0] // 2, ..., shape[-2] // 2, :])
            dtype = str(ds.dtype)
    except (OSError, KeyError, ValueError) as err:
        raise FastMRIFileError(path, f"dataset 'kspace' cannot be read ({err})") from err
    digest = hashlib.sha256(f"{shape}|{dtype}|".encode("utf-8"))
    digest.update(row.tobytes())
    return digest.hexdigest()[:32]


def validate_fastmri_file(
    path: Union[str, Path],
    challenge: Optional[str] = None,
    max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS,
    max_slices: int = DEFAULT_MAX_SLICES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Tuple[int, Tuple[int, ...]]:
    """Check that ``path`` is a usable fastMRI raw-data file.

    Checks: exists, non-empty, HDF5 signature, opens, has ``kspace`` of a
    complex dtype with ``(slices, H, W)`` (singlecoil) or
    ``(slices, coils, H, W)`` (multicoil) dimensions and a slice size below
    ``max_slice_elements`` (checked from the metadata, before any read),
    at most ``max_slices`` slices and at most :data:`MAX_DECLARED_TO_FILE_RATIO`
    times the file's size of declared k-space (unwritten HDF5 chunks read as
    fill values: a tiny file can declare terabytes, and the value scan would
    run for hours), an ``ismrmrd_header`` of at most ``max_header_bytes``
    (checked before it is read), the last slice is readable (catches
    truncation), and ``ismrmrd_header``
    parses with the fields fastmri reads. A missing ``reconstruction_*`` is
    fine: the HR target comes from k-space.

    Returns:
        ``(num_slices, kspace_shape)``.

    Raises:
        FileNotFoundError, FastMRIFileError: naming the file and the problem.
    """
    path = Path(path)
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except (OSError, RuntimeError) as err:
            raise FastMRIFileError(path, f"is a dangling or looping symbolic link ({err})") from err
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise FastMRIFileError(path, "file is empty (0 bytes)")
    if not h5py.is_hdf5(str(path)):
        raise FastMRIFileError(path, "not an HDF5 file (no HDF5 signature)")
    try:
        hf = h5py.File(path, "r")
    except OSError as err:
        raise FastMRIFileError(path, f"cannot be opened, truncated or corrupt HDF5 ({err})") from err
    with hf:
        if "kspace" not in hf:
            raise FastMRIFileError(path, f"missing dataset 'kspace' (has {sorted(hf.keys())})")
        ds = hf["kspace"]
        if not isinstance(ds, h5py.Dataset):
            raise FastMRIFileError(path, "'kspace' is not a dataset")
        shape = tuple(int(n) for n in ds.shape)
        if not np.issubdtype(ds.dtype, np.complexfloating):
            raise FastMRIFileError(path, f"dataset 'kspace' must be complex, got dtype {ds.dtype}")
        expected = {"singlecoil": 3, "multicoil": 4}.get(challenge or "", None)
        if expected is None:
            ok = len(shape) in (3, 4)
        else:
            ok = len(shape) == expected
        if not ok:
            want = f"{expected}" if expected else "3 or 4"
            raise FastMRIFileError(
                path,
                f"dataset 'kspace' has shape {shape}; expected {want} dimensions "
                f"((slices, H, W) singlecoil or (slices, coils, H, W) multicoil)",
            )
        if shape[0] < 1 or any(n < 1 for n in shape):
            raise FastMRIFileError(path, f"dataset 'kspace' has an empty shape {shape}")
        per_slice = int(np.prod(shape[1:]))
        if per_slice > max_slice_elements:
            raise FastMRIFileError(
                path,
                f"dataset 'kspace' declares shape {shape}: {per_slice} samples per slice exceed "
                f"the limit of {max_slice_elements} (max_slice_elements); refusing to read it",
            )
        if shape[0] > max_slices:
            raise FastMRIFileError(
                path,
                f"dataset 'kspace' declares shape {shape}: {shape[0]} slices exceed the limit of "
                f"{max_slices} slices per file; refusing to read it",
            )
        declared = shape[0] * per_slice * int(ds.dtype.itemsize)
        file_size = path.stat().st_size
        if declared > MAX_DECLARED_TO_FILE_RATIO * file_size:
            raise FastMRIFileError(
                path,
                f"dataset 'kspace' declares shape {shape} = {declared} bytes, more than "
                f"{MAX_DECLARED_TO_FILE_RATIO} times the file's {file_size} bytes: the file does not "
                f"hold that data (unwritten parts read as fill values); refusing to read it",
            )
        try:
            ds[shape[0] - 1, ..., :1, :]
        except (OSError, ValueError, RuntimeError) as err:
            raise FastMRIFileError(
                path, f"dataset 'kspace' cannot be read, the file is truncated or corrupt ({err})"
            ) from err
        if "ismrmrd_header" not in hf:
            raise FastMRIFileError(path, "missing dataset 'ismrmrd_header'")
        _check_header_size(path, hf["ismrmrd_header"], max_header_bytes)
        try:
            raw = hf["ismrmrd_header"][()]
        except (OSError, ValueError, RuntimeError) as err:
            raise FastMRIFileError(path, f"dataset 'ismrmrd_header' cannot be read ({err})") from err
        if isinstance(raw, np.ndarray):
            raw = raw.tobytes() if raw.dtype.kind in "SVu" else bytes(raw.item())
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        _check_other_datasets(path, hf, shape[0], max_slice_elements)
        enc_x, enc_y = _check_header(path, raw)
        if enc_x * enc_y > max_slice_elements:
            raise FastMRIFileError(
                path,
                f"'ismrmrd_header' declares an encoded matrix of {enc_x}x{enc_y}, above the limit of "
                f"{max_slice_elements} samples per slice (max_slice_elements); refusing it",
            )
    return shape[0], shape
