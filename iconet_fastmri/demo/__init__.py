"""Synthetic, anatomy-like MRI volumes written in the exact fastMRI HDF5 layout.

The demo, the tests and the CI need raw k-space that goes through the same
code path as the real fastMRI knee/brain files (``fastmri.data.SliceDataset``,
our transforms, the masks) without downloading hundreds of gigabytes; this
package simulates such files procedurally with numpy/scipy only:
:mod:`.phantoms` (anatomy models, drawing helpers in :mod:`.texture`),
:mod:`.acquisition` (coils, ISMRMRD header, k-space and target) and
:mod:`.writer` (HDF5 files, demo splits).
"""

from .acquisition import (
    SyntheticVolume,
    center_crop_np,
    coil_sensitivities,
    fft2c_np,
    ifft2c_np,
    ismrmrd_header,
    simulate_volume,
)
from .phantoms import ACQUISITIONS, ANATOMIES, default_kspace_width, make_phantom_volume
from .writer import DEMO_MARKER, make_demo_splits, write_fastmri_dataset

__all__ = [
    "ACQUISITIONS",
    "DEMO_MARKER",
    "ANATOMIES",
    "SyntheticVolume",
    "center_crop_np",
    "coil_sensitivities",
    "default_kspace_width",
    "fft2c_np",
    "ifft2c_np",
    "ismrmrd_header",
    "make_demo_splits",
    "make_phantom_volume",
    "simulate_volume",
    "write_fastmri_dataset",
]
