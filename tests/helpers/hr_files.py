"""fastMRI-format HR files without oversampling (k-space matrix = the HR grid), for exactness tests."""

import h5py
import numpy as np

from iconet_fastmri.demo.acquisition import fft2c_np, ismrmrd_header


def write_hr_file(path, coils, slices=3, seed=0, size=(32, 32)):
    """k-space ``(S, [C,] H, W)`` of an elliptical textured object (``coils=0``: single-coil), header H x W."""
    H, W = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    blob = (xx**2 / 0.5 + yy**2 / 0.3 < 1).astype(np.float32)
    images = np.stack([blob * (1 + 0.3 * rng.standard_normal((H, W))) for _ in range(slices)]).astype(np.complex64)
    if coils:
        images = images[:, None] * np.exp(1j * rng.uniform(0, 6, (1, coils, 1, 1))).astype(np.complex64)
    kspace = fft2c_np(images).astype(np.complex64) * 1e-4
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header((H, W), (H, W), slices, max(coils, 1))))
        f.attrs["acquisition"] = "CORPD_FBK"
    return path
