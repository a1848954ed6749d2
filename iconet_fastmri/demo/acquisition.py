"""Simulated acquisitions: coil sensitivities, the ISMRMRD header, noisy k-space and its target.

:func:`simulate_volume` turns a phantom of :mod:`.phantoms` into the k-space
and reconstruction of one fastMRI volume in memory; the numpy FFTs here are
an independent reference for the torch code in :mod:`iconet_fastmri.physics`.

FFT convention (the same as :mod:`iconet_fastmri.physics.fft` and ``fastmri.fft2c``):
k-space is centred and orthonormal,
``kspace = fftshift(fft2(ifftshift(image), norm="ortho"))`` over the last two
axes, zero frequency at index ``(H // 2, W // 2)``. The k-space is computed
with :mod:`numpy.fft` on purpose, so it is an independent reference for
the torch FFT code.

Centre crops start at index ``(N - n) // 2`` along each axis, as in
``fastmri.data.transforms.center_crop``.

Multicoil data use ``sigpy.mri.birdcage_maps`` sensitivities (normalised so
that their root-sum-of-squares is one, hence the RSS image equals the
magnitude of the phantom up to noise). Complex white Gaussian noise is added
in k-space; because the FFT is orthonormal its standard deviation is also the
image-domain noise level. ``noise_level`` is that standard deviation
relative to the maximum phantom magnitude; the default 0.005 gives a mean
tissue SNR of roughly 40 dB.
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..data.validation import ISMRMRD_NAMESPACE
from .phantoms import make_phantom_volume

__all__ = [
    "SyntheticVolume",
    "center_crop_np",
    "coil_sensitivities",
    "fft2c_np",
    "ifft2c_np",
    "ismrmrd_header",
    "simulate_volume",
]

_RECON_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}

# ``systemModel`` written into every header; it keeps the module's former name
# so that the files stay byte-for-byte identical to those written before the move.
_SYSTEM_MODEL = "iconet_fastmri.data.synthetic"


def fft2c_np(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (numpy reference).

    Args:
        image: complex array ``(..., H, W)``, image origin at ``(H // 2, W // 2)``.

    Returns:
        Complex array ``(..., H, W)``, zero frequency at ``(H // 2, W // 2)``.
    """
    axes = (-2, -1)
    shifted = np.fft.ifftshift(image, axes=axes)
    return np.fft.fftshift(np.fft.fft2(shifted, axes=axes, norm="ortho"), axes=axes)


def ifft2c_np(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2D FFT over the last two axes (numpy reference).

    Args:
        kspace: complex array ``(..., H, W)``, zero frequency at ``(H // 2, W // 2)``.

    Returns:
        Complex image ``(..., H, W)``.
    """
    axes = (-2, -1)
    shifted = np.fft.ifftshift(kspace, axes=axes)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes)


def center_crop_np(data: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two axes, start index ``(N - n) // 2`` as in fastMRI.

    Args:
        data: array ``(..., H, W)``.
        shape: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
        View ``(..., h, w)``.
    """
    h, w = shape
    H, W = data.shape[-2:]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"cannot crop {data.shape[-2:]} to {shape}")
    top = (H - h) // 2
    left = (W - w) // 2
    return data[..., top : top + h, left : left + w]


@functools.lru_cache(maxsize=8)
def _birdcage(num_coils: int, H: int, W: int, radius: float) -> np.ndarray:
    import sigpy.mri  # lazy: sigpy takes ~2 s to import and is only needed for multicoil

    maps = sigpy.mri.birdcage_maps((num_coils, H, W), r=radius, nzz=num_coils,
                                   dtype=np.complex64)
    maps.setflags(write=False)
    return maps


def coil_sensitivities(
    num_coils: int, image_shape: Tuple[int, int], radius: float = 1.25
) -> np.ndarray:
    """Birdcage coil sensitivities with unit root-sum-of-squares.

    Uses ``sigpy.mri.birdcage_maps((num_coils, H, W), r=radius, nzz=num_coils)``;
    the coils sit on a ring of relative radius ``radius`` (in units of half the
    field of view along each axis), so the sensitivities vary strongly across
    the object in the phase-encode direction.

    Args:
        num_coils: number of coils ``C``.
        image_shape: ``(H, W)`` image grid (the readout-oversampled one).
        radius: relative coil-ring radius.

    Returns:
        Read-only complex64 array ``(C, H, W)`` with ``sum_c |S_c|^2 == 1``.
    """
    return _birdcage(int(num_coils), int(image_shape[0]), int(image_shape[1]), float(radius))


def ismrmrd_header(
    encoded_size: Tuple[int, int],
    recon_size: Tuple[int, int],
    num_slices: int,
    num_coils: int = 1,
    acquisition: str = "CORPD_FBK",
    recon_fov_mm: Optional[Tuple[float, float]] = None,
    slice_thickness_mm: Optional[float] = None,
) -> bytes:
    """ISMRMRD XML header (bytes) in the form fastMRI's ``SliceDataset`` parses.

    ``x`` is the readout (k-space dim -2) and ``y`` the phase encode (dim -1).
    ``kspace_encoding_step_1`` is ``(0, W_k - 1, W_k // 2)`` so fastMRI derives
    ``padding_left = 0`` and ``padding_right = W_k`` (no zero-filled columns).

    Args:
        encoded_size: ``(H_k, W_k)``.
        recon_size: ``(rh, rw)``.
        num_slices: number of slices (``encodingLimits/slice``).
        num_coils: receiver channels.
        acquisition: protocol name; knee ("COR...") or brain ("AX...") defaults
            for the fields of view and the sequence parameters.
        recon_fov_mm: reconstructed field of view ``(x, y)`` in mm
            (default 140 mm knee, 220 mm brain, square pixels).
        slice_thickness_mm: default 3 mm knee, 5 mm brain.

    Returns:
        UTF-8 encoded XML with default namespace ``http://www.ismrm.org/ISMRMRD``.
    """
    Hk, Wk = (int(n) for n in encoded_size)
    rh, rw = (int(n) for n in recon_size)
    knee = acquisition.upper().startswith("COR")
    if recon_fov_mm is None:
        side = 140.0 if knee else 220.0
        recon_fov_mm = (side, side * rw / rh)
    if slice_thickness_mm is None:
        slice_thickness_mm = 3.0 if knee else 5.0
    fov_x, fov_y = recon_fov_mm
    enc_fov = (fov_x * Hk / rh, fov_y * Wk / rw)

    ET.register_namespace("", ISMRMRD_NAMESPACE)

    def el(parent: ET.Element, tag: str, text: Optional[object] = None) -> ET.Element:
        node = ET.SubElement(parent, f"{{{ISMRMRD_NAMESPACE}}}{tag}")
        if text is not None:
            node.text = f"{text:g}" if isinstance(text, float) else str(text)
        return node

    def xyz(parent: ET.Element, tag: str, values: Sequence[object]) -> None:
        node = el(parent, tag)
        for axis, value in zip("xyz", values):
            el(node, axis, value)

    def limit(parent: ET.Element, tag: str, lo: int, hi: int, centre: int) -> None:
        node = el(parent, tag)
        el(node, "minimum", lo)
        el(node, "maximum", hi)
        el(node, "center", centre)

    root = ET.Element(f"{{{ISMRMRD_NAMESPACE}}}ismrmrdHeader")
    el(root, "version", 1)
    meas = el(root, "measurementInformation")
    el(meas, "patientPosition", "FFS" if knee else "HFS")
    el(meas, "protocolName", acquisition)
    system = el(root, "acquisitionSystemInformation")
    el(system, "systemVendor", "SYNTHETIC")
    el(system, "systemModel", _SYSTEM_MODEL)
    el(system, "systemFieldStrength_T", 3.0)
    el(system, "receiverChannels", int(num_coils))
    cond = el(root, "experimentalConditions")
    el(cond, "H1resonanceFrequency_Hz", 127_728_000)
    enc = el(root, "encoding")
    enc_space = el(enc, "encodedSpace")
    xyz(enc_space, "matrixSize", (Hk, Wk, 1))
    thickness = float(slice_thickness_mm)
    xyz(enc_space, "fieldOfView_mm", (float(enc_fov[0]), float(enc_fov[1]), thickness))
    rec_space = el(enc, "reconSpace")
    xyz(rec_space, "matrixSize", (rh, rw, 1))
    xyz(rec_space, "fieldOfView_mm", (float(fov_x), float(fov_y), thickness))
    limits = el(enc, "encodingLimits")
    limit(limits, "kspace_encoding_step_1", 0, Wk - 1, Wk // 2)
    limit(limits, "kspace_encoding_step_2", 0, 0, 0)
    limit(limits, "average", 0, 0, 0)
    limit(limits, "slice", 0, max(int(num_slices) - 1, 0), 0)
    for tag in ("contrast", "phase", "repetition", "set", "segment"):
        limit(limits, tag, 0, 0, 0)
    el(enc, "trajectory", "cartesian")
    seq = el(root, "sequenceParameters")
    if knee:
        params = {"TR": 2750.0, "TE": 27.0, "TI": 100.0, "flipAngle_deg": 160.0}
    elif acquisition.upper().startswith("AXT1"):
        params = {"TR": 250.0, "TE": 2.64, "TI": 300.0, "flipAngle_deg": 70.0}
    else:
        params = {"TR": 6000.0, "TE": 113.0, "TI": 2000.0, "flipAngle_deg": 150.0}
    for tag, value in params.items():
        el(seq, tag, value)
    el(seq, "sequence_type", "TurboSpinEcho")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@dataclass
class SyntheticVolume:
    """One simulated volume in fastMRI layout.

    Attributes:
        kspace: complex64 ``(S, H_k, W_k)`` or ``(S, C, H_k, W_k)``, centred, orthonormal.
        target: float32 ``(S, rh, rw)``: centre crop of ESC / RSS of ``ifft2c(kspace)``.
        acquisition: fastMRI ``acquisition`` attribute.
        challenge: "singlecoil" or "multicoil".
    """

    kspace: np.ndarray
    target: np.ndarray
    acquisition: str
    challenge: str

    @property
    def recon_key(self) -> str:
        return _RECON_KEYS[self.challenge]


def simulate_volume(
    challenge: str,
    num_slices: int,
    recon_size: Tuple[int, int] = (128, 128),
    kspace_width: Optional[int] = None,
    num_coils: int = 8,
    noise_level: float = 0.005,
    anatomy: str = "mixed",
    image_scale: float = 1e-4,
    coil_radius: float = 1.25,
    seed: Union[int, Sequence[int], np.random.Generator] = 0,
) -> SyntheticVolume:
    """Simulate the k-space and target of one volume (in memory).

    Args:
        challenge: "singlecoil" or "multicoil".
        num_slices: slices ``S``.
        recon_size: ``(rh, rw)``.
        kspace_width: ``W_k`` (default :func:`default_kspace_width`).
        num_coils: coils ``C`` (multicoil only).
        noise_level: standard deviation of the complex k-space noise (per
            coil, ``E|n|^2``) relative to the phantom's maximum magnitude.
        anatomy: "knee", "brain" or "mixed".
        image_scale: maximum image magnitude (real fastMRI images are ~1e-4).
        coil_radius: relative birdcage radius (see :func:`coil_sensitivities`).
        seed: integer, integer sequence or generator.

    Returns:
        :class:`SyntheticVolume`.
    """
    if challenge not in _RECON_KEYS:
        raise ValueError(f'challenge must be "singlecoil" or "multicoil", got {challenge!r}')
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    image, acquisition = make_phantom_volume(
        num_slices, recon_size, kspace_width, anatomy, None, rng
    )
    image *= float(image_scale)
    if challenge == "multicoil":
        maps = coil_sensitivities(num_coils, image.shape[-2:], coil_radius)
        image = image[:, None] * maps[None]
    kspace = fft2c_np(image)
    if noise_level > 0:
        sigma = noise_level * image_scale / math.sqrt(2.0)
        noise = rng.standard_normal(kspace.shape + (2,), dtype=np.float32).view(np.complex64)
        kspace += sigma * noise[..., 0]
    kspace = kspace.astype(np.complex64, copy=False)

    # The target comes from the stored k-space (noise included), like fastMRI's.
    coil_images = ifft2c_np(kspace)
    if challenge == "multicoil":
        magnitude = np.sqrt(np.sum(coil_images.real**2 + coil_images.imag**2, axis=1))
    else:
        magnitude = np.abs(coil_images)
    target = np.ascontiguousarray(center_crop_np(magnitude, tuple(recon_size)), dtype=np.float32)
    return SyntheticVolume(kspace, target, acquisition, challenge)
