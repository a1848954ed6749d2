"""Up-front checks of fastMRI HDF5 files, with errors that name the file.

fastmri's :class:`~fastmri.data.SliceDataset` opens every entry of a folder
in its constructor and fails on a bad one with h5py/lxml errors that do not
say which file broke. We check the files first and raise
:class:`FastMRIFileError` naming the file, the key and the problem.
"""

from __future__ import annotations

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
]

log = logging.getLogger(__name__)

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
#: Largest k-space slice (coils x rows x columns) accepted by default: 2**26
#: complex samples = 512 MiB of complex64, far above any fastMRI slice (16 x 640 x 400).
DEFAULT_MAX_SLICE_ELEMENTS = 2**26

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


def scan_kspace_values(path: Union[str, Path]) -> None:
    """Read every k-space slice once: NaN, Inf or an all-zero slice is a :class:`FastMRIFileError`.

    Streams one slice at a time (memory: one slice). It reads the whole file,
    so the dataset runs it once per file and caches the result (keyed by the
    file's size and modification time).
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
                if not np.any(data):
                    raise FastMRIFileError(path, f"dataset 'kspace', slice {i}: all zeros")
    except (OSError, KeyError) as err:
        raise FastMRIFileError(path, f"dataset 'kspace' cannot be read ({err})") from err


def validate_fastmri_file(
    path: Union[str, Path],
    challenge: Optional[str] = None,
    max_slice_elements: int = DEFAULT_MAX_SLICE_ELEMENTS,
) -> Tuple[int, Tuple[int, ...]]:
    """Check that ``path`` is a usable fastMRI raw-data file.

    Checks: exists, non-empty, HDF5 signature, opens, has ``kspace`` of a
    complex dtype with ``(slices, H, W)`` (singlecoil) or
    ``(slices, coils, H, W)`` (multicoil) dimensions and a slice size below
    ``max_slice_elements`` (checked from the metadata, before any read),
    the last slice is readable (catches truncation), and ``ismrmrd_header``
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
        try:
            ds[shape[0] - 1, ..., :1, :]
        except (OSError, ValueError, RuntimeError) as err:
            raise FastMRIFileError(
                path, f"dataset 'kspace' cannot be read, the file is truncated or corrupt ({err})"
            ) from err
        if "ismrmrd_header" not in hf:
            raise FastMRIFileError(path, "missing dataset 'ismrmrd_header'")
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
