"""Low-resolution acquisition files: fastMRI HDF5 whose ``kspace`` is an s-times coarser, undersampled scan.

A real low-resolution scan acquires the central block of the k-space a
high-resolution scan of the same field of view would acquire: the same samples,
in the scanner's units, on an ``(H_k/s, W_k/s)`` matrix (readout oversampling
included). :func:`make_lr_volume` cuts such a scan out of a fastMRI file, draws
the sampling mask on it, zero-fills the lines not acquired and rewrites the
ISMRMRD header (encoded and reconstructed matrices divided by s, fields of view
kept), so prospective-style test sets can be built from fastMRI data
(``scripts/make_lr_acquisition.py``). :func:`read_lr_file` reads one back,
checking the header against the array.

:func:`model_grid_kspace` puts a scan on the grid and intensity convention of
training (docs/PIPELINE.md, "Degradation conventions"): the model's LR grid is
``hr_crop / s`` and its k-space is the HR k-space truncated with the factor
``sqrt(hw/HW) = 1/s``. Where the file has no oversampling (its matrix is the
model's LR grid), the model's k-space is exactly ``kspace / s``, and a file made
from an HR file gives exactly the retrospective pipeline's input
(``tests/data/test_lr_files.py``). With oversampling the image is cropped
after the inverse FFT, which does not commute exactly with the truncation of
the retrospective pipeline (crop, then truncate); :func:`crop_order_difference`
gives the difference and a bound derived from the operators.

File layout: ``kspace`` ``(S, [C,] h_k, w_k)`` complex64 with zero columns where
not acquired; ``mask`` ``(S, w_k)`` (1D masks) or ``(S, h_k, w_k)`` float32, 1 =
acquired; ``ismrmrd_header``; attributes ``acquisition``, ``patient_id`` (when the
source has them), ``lr_scale`` (s), ``lr_source`` (the source file's name),
``lr_mask`` (the mask's spec) and ``mask_seed_rule``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import h5py
import numpy as np
import torch

from ..io import atomic_write
from ..physics.fft import fft2c, ifft2c
from ..physics.masks import eval_mask_seed
from ..physics.operators import check_scale, crop_kspace, intensity_factor, pad_kspace
from .transforms import center_crop_2d

__all__ = ["is_lr_acquisition_folder", "LrScan", "lr_header", "make_lr_volume", "write_lr_file", "read_lr_file", "model_grid_kspace",
           "central_block", "crop_order_difference", "phase_encode_samples"]

ISMRMRD = "http://www.ismrm.org/ISMRMRD"


def _find(root: ET.Element, *path: str) -> ET.Element:
    node = root.find("/".join(f"{{{ISMRMRD}}}{p}" for p in path))
    if node is None:
        raise KeyError("/".join(path))
    return node


def _matrix(root: ET.Element, space: str) -> Tuple[int, int]:
    return int(_find(root, "encoding", space, "matrixSize", "x").text), int(_find(root, "encoding", space, "matrixSize", "y").text)


def central_block(kspace: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """The centred ``shape`` block of centred k-space, DC-aligned (index ``N//2`` -> ``n//2``), values unchanged.

    :func:`~iconet_fastmri.physics.operators.crop_kspace` (the truncation's rule) without its
    intensity factor ``1/s``; dividing by a power of two is exact.
    """
    big = tuple(kspace.shape[-2:])
    block = crop_kspace(torch.from_numpy(np.ascontiguousarray(kspace)), tuple(shape))  # the truncation's own rule
    return (block / intensity_factor(tuple(shape), big)).numpy().astype(kspace.dtype, copy=False)


def lr_header(header: bytes, scale: int, where: str = "header") -> bytes:
    """The ISMRMRD header of the s-times coarser scan: encoded and recon matrices / s, fields of view kept.

    ``kspace_encoding_step_1`` (fastMRI derives its zero-padded columns from it) is
    scaled the same way. A matrix the scale does not divide is a ``ValueError``
    naming ``where``.
    """
    s = check_scale(scale)
    ET.register_namespace("", ISMRMRD)
    root = ET.fromstring(header)
    try:
        for space in ("encodedSpace", "reconSpace"):
            for axis in ("x", "y"):
                node = _find(root, "encoding", space, "matrixSize", axis)
                n = int(node.text)
                if n % s:
                    raise ValueError(f"{where}: {space} matrix {axis} = {n} is not divisible by the scale {s}")
                node.text = str(n // s)
        limits = ("encoding", "encodingLimits", "kspace_encoding_step_1")
        centre, maximum = _find(root, *limits, "center"), _find(root, *limits, "maximum")
        w_old = int(_find(root, "encoding", "encodedSpace", "matrixSize", "y").text) * s
        left = w_old // 2 - int(centre.text)
        width = int(maximum.text) + 1
        w_new = w_old // s
        centre.text = str(w_new // 2 - left // s)
        maximum.text = str(max(width // s, 1) - 1)
    except KeyError as err:
        raise ValueError(f"{where}: the ISMRMRD header has no {err.args[0]}") from None
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def make_lr_volume(
    kspace: np.ndarray, header: bytes, scale: int, mask_func: Callable, fname: str, seed_rule: str = "slice"
) -> Tuple[np.ndarray, np.ndarray, bytes]:
    """``(lr_kspace, mask, lr_header)`` of one volume ``(S, [C,] H_k, W_k)``.

    The mask of slice ``i`` is ``mask_func((h_k, w_k), seed=eval_mask_seed(fname, i, seed_rule))``:
    the seeds of validation and inference, so the retrospective pipeline on the
    source file draws the same masks. ``mask`` is ``(S, w_k)`` when every mask is
    constant along the readout, else ``(S, h_k, w_k)``.
    """
    s = check_scale(scale)
    Hk, Wk = kspace.shape[-2:]
    if Hk % s or Wk % s:
        raise ValueError(f"{fname}: k-space {Hk}x{Wk} is not divisible by the scale {s}")
    shape = (Hk // s, Wk // s)
    block = np.ascontiguousarray(central_block(kspace, shape), dtype=np.complex64)
    masks = []
    for i in range(block.shape[0]):
        mask, _ = mask_func(shape, seed=eval_mask_seed(fname, i, seed_rule))
        masks.append(np.asarray(torch.as_tensor(mask, dtype=torch.float32).reshape(shape)))
    masks = np.stack(masks)
    coil_axis = (slice(None),) + ((None,) if block.ndim == 4 else ())
    block *= masks[coil_axis]
    if all(np.array_equal(m, np.broadcast_to(m[:1], m.shape)) for m in masks):
        masks = masks[:, 0, :]
    return block, masks.astype(np.float32), lr_header(header, s, fname)


def write_lr_file(src: Union[str, Path], dst: Union[str, Path], scale: int, mask_func: Callable,
                  mask_spec: Optional[Dict[str, Any]] = None, seed_rule: str = "slice") -> Path:
    """Write the low-resolution acquisition of fastMRI file ``src`` to ``dst`` (atomically)."""
    src, dst = Path(src), Path(dst)
    with h5py.File(src, "r") as f:
        for key in ("kspace", "ismrmrd_header"):
            if key not in f:
                raise KeyError(f"{src}: no '{key}' dataset")
        kspace = f["kspace"][()]
        header = f["ismrmrd_header"][()]
        attrs = {k: f.attrs[k] for k in ("acquisition", "patient_id") if k in f.attrs}
    if not np.iscomplexobj(kspace) or kspace.ndim not in (3, 4):
        raise ValueError(f"{src}: 'kspace' must be complex (slices, [coils,] rows, columns), got {kspace.dtype} {kspace.shape}")
    block, mask, lr_head = make_lr_volume(kspace, bytes(header), scale, mask_func, src.name, seed_rule)

    def write(path: Path) -> None:
        with h5py.File(path, "w") as out:
            out.create_dataset("kspace", data=block)
            out.create_dataset("mask", data=mask)
            out.create_dataset("ismrmrd_header", data=np.bytes_(lr_head))
            out.attrs.update(attrs)
            out.attrs["lr_scale"] = int(scale)
            out.attrs["lr_source"] = src.name
            out.attrs["mask_seed_rule"] = seed_rule
            if mask_spec is not None:
                out.attrs["lr_mask"] = repr(mask_spec)

    atomic_write(dst, write)
    return dst


def is_lr_acquisition_folder(folder: Union[str, Path]) -> bool:
    """Whether every ``*.h5`` of ``folder`` was written by :func:`write_lr_file` (attribute ``lr_scale``)."""
    files = sorted(Path(folder).glob("*.h5"))
    if not files:
        return False
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                if "lr_scale" not in f.attrs:
                    return False
        except OSError:
            return False
    return True


@dataclass
class LrScan:
    """One low-resolution acquisition read from a file.

    Attributes:
        kspace: ``(S, C, h_k, w_k)`` complex64, zero where not acquired (``C = 1`` single-coil).
        mask: ``(S, h_k, w_k)`` float32, 1 = acquired.
        encoded: the encoded matrix ``(h_k, w_k)`` (readout, phase encode).
        recon: the reconstructed matrix ``(h, w)`` of the header.
        fname: the file's name.
        attrs: the file's attributes.
    """

    kspace: np.ndarray
    mask: np.ndarray
    encoded: Tuple[int, int]
    recon: Tuple[int, int]
    fname: str
    attrs: Dict[str, Any]


def read_lr_file(path: Union[str, Path]) -> LrScan:
    """Read a low-resolution acquisition; the header, the mask and the array must agree (``ValueError`` naming them).

    The mask comes from the file's ``mask`` dataset (``(w_k,)``, ``(S, w_k)``,
    ``(h_k, w_k)`` or ``(S, h_k, w_k)``) or, without one, from the columns that
    hold any non-zero sample (fastMRI's test files zero-fill what was not acquired). A slice
    that acquires nothing is refused.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        if "kspace" not in f or "ismrmrd_header" not in f:
            raise ValueError(f"{path}: a low-resolution acquisition needs 'kspace' and 'ismrmrd_header'")
        kspace = f["kspace"][()]
        header = bytes(f["ismrmrd_header"][()])
        mask = f["mask"][()] if "mask" in f else None
        attrs = dict(f.attrs)
    if not np.iscomplexobj(kspace) or kspace.ndim not in (3, 4):
        raise ValueError(f"{path}: 'kspace' must be complex (slices, [coils,] rows, columns), got {kspace.dtype} {kspace.shape}")
    if not np.isfinite(kspace).all():
        raise ValueError(f"{path}: 'kspace' holds NaN or Inf")
    kspace = kspace if kspace.ndim == 4 else kspace[:, None]
    S, _, hk, wk = kspace.shape
    try:
        root = ET.fromstring(header)
        encoded, recon = _matrix(root, "encodedSpace"), _matrix(root, "reconSpace")
    except (ET.ParseError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable ISMRMRD header ({err})") from None
    if encoded != (hk, wk):
        raise ValueError(f"{path}: the header's encoded matrix {encoded[0]}x{encoded[1]} disagrees with "
                         f"the k-space array's {hk}x{wk}")
    if recon[0] > hk or recon[1] > wk:
        raise ValueError(f"{path}: the header's recon matrix {recon[0]}x{recon[1]} is larger than the encoded "
                         f"{hk}x{wk}")
    if mask is None:
        mask = (np.abs(kspace).sum(axis=(1, 2)) > 0).astype(np.float32)  # (S, w_k)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape in ((wk,), (hk, wk)):
        mask = np.broadcast_to(mask, (S,) + mask.shape)
    if mask.shape == (S, wk):
        mask = mask[:, None, :]
    if mask.shape not in ((S, 1, wk), (S, hk, wk)):
        raise ValueError(f"{path}: 'mask' has shape {mask.shape}; expected ({wk},), ({S}, {wk}), "
                         f"({hk}, {wk}) or ({S}, {hk}, {wk}) for k-space {tuple(kspace.shape)}")
    mask = np.array(np.broadcast_to(mask, (S, hk, wk)))  # a writable copy
    if not np.isin(mask, (0.0, 1.0)).all():
        raise ValueError(f"{path}: 'mask' must hold only 0 and 1")
    empty = np.flatnonzero(mask.reshape(S, -1).max(axis=1) == 0)
    if empty.size:
        raise ValueError(f"{path}: slice(s) {empty[:5].tolist()} acquire no samples (an all-zero mask or k-space)")
    if np.abs(kspace * (1 - mask[:, None])).max(initial=0.0) > 0:
        raise ValueError(f"{path}: k-space is non-zero where 'mask' says nothing was acquired")
    return LrScan(kspace.astype(np.complex64, copy=False), mask, encoded, recon, path.name, attrs)


def _on_model_rows(scan: LrScan, slice_num: int, s: int, h: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kspace / s (C, h, w_k), mask (1, h, w_k))``: an oversampled readout cropped to ``h`` rows, columns kept.

    The crop is in the image domain and exact, as the readout is fully sampled; a mask
    that varies along an oversampled readout is refused, naming the file.
    """
    k = torch.from_numpy(scan.kspace[slice_num]) / s
    m = torch.from_numpy(scan.mask[slice_num])
    hk, wk = k.shape[-2:]
    if hk != h:
        if not torch.equal(m, m[:1].expand_as(m)):
            raise ValueError(f"{scan.fname}: a mask that varies along the oversampled readout cannot be cropped")
        k = fft2c(center_crop_2d(ifft2c(k), (h, wk))) * m[:1]
        m = m[:1].expand(h, wk)
    return k, m[None].contiguous()


def _check_grid(scan: LrScan, lr_grid: Tuple[int, int]) -> Tuple[int, int]:
    h, w = int(lr_grid[0]), int(lr_grid[1])
    hk, wk = scan.kspace.shape[-2:]
    if hk < h or wk < w:
        raise ValueError(f"{scan.fname}: its {hk}x{wk} matrix is smaller than the model's LR grid {h}x{w}")
    return h, w


def model_grid_kspace(scan: LrScan, slice_num: int, scale: int, lr_grid: Tuple[int, int], with_mask: bool = True
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One slice on the model's LR grid, in training's intensity convention: ``(kspace (C, h, w), mask (1, h, w))``.

    ``kspace / s`` exactly when the file's matrix is ``lr_grid``. Otherwise the
    image ``ifft2c(kspace) / s`` is centre-cropped to ``lr_grid`` (fastMRI's crop
    convention) and transformed back. A readout-oversampled file keeps its mask
    when the mask is constant along the readout. Phase-encode oversampling
    (``w_k > w``) changes the field of view along the undersampled axis, so no
    mask exists on the model's grid: allowed only with ``with_mask=False``, which
    returns ``None`` for it (the zero-filled image cropped: the network's input);
    data consistency uses :func:`phase_encode_samples` instead.
    """
    s = check_scale(scale)
    h, w = _check_grid(scan, lr_grid)
    wk = scan.kspace.shape[-1]
    if not with_mask:
        k = torch.from_numpy(scan.kspace[slice_num]) / s
        return (k if tuple(k.shape[-2:]) == (h, w) else fft2c(center_crop_2d(ifft2c(k), (h, w)))), None
    if wk != w:
        raise ValueError(f"{scan.fname}: its phase encode is oversampled ({wk} columns for a {w}-column grid), so "
                         f"its sampling mask has no equivalent on the model's grid; a model with data consistency "
                         f"or complex input cannot use it (a magnitude model can)")
    return _on_model_rows(scan, slice_num, s, h)


def phase_encode_samples(scan: LrScan, slice_num: int, scale: int, lr_grid: Tuple[int, int]
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The measured samples of a phase-encode oversampled slice on the model's rows: ``(kspace (C, h, w_k), mask (1, h, w_k))``.

    In training's intensity convention (``kspace / s``); an oversampled readout is
    cropped to the model's ``h`` rows in the image domain, exact because the readout
    is fully sampled (a mask that varies along it is refused). The columns keep the
    scan's wider field of view: data consistency reaches them through
    :class:`~iconet_fastmri.physics.operators.PhaseEncodeOversampling`.
    """
    s = check_scale(scale)
    h, w = _check_grid(scan, lr_grid)
    if scan.kspace.shape[-1] == w:
        raise ValueError(f"{scan.fname}: its {scan.kspace.shape[-2]}x{w} matrix does not oversample the phase encode "
                         f"of the model's LR grid {h}x{w}")
    return _on_model_rows(scan, slice_num, s, h)


def _band_projection(images: torch.Tensor, band: Tuple[int, int]) -> torch.Tensor:
    """``Π``: the orthogonal projection of images onto the centred ``band`` of their own grid's k-space."""
    grid = tuple(images.shape[-2:])
    a2 = intensity_factor(band, grid) ** 2  # crop_kspace then pad_kspace multiply by it
    return ifft2c(pad_kspace(crop_kspace(fft2c(images), band), grid)) / a2


def crop_order_difference(kspace: torch.Tensor, hr_crop: Tuple[int, int], scale: int) -> Dict[str, torch.Tensor]:
    """How the acquired LR image of an oversampled scan differs from the retrospective one, and a bound.

    ``kspace`` ``(..., H_k, W_k)`` is one HR slice on its encoded grid (``X = F⁻¹ kspace``), ``C`` the
    centre crop to ``hr_crop`` (the HR grid rule), ``S`` taking every s-th pixel of the HR grid, and
    ``Π_enc``/``Π_rec`` the projections onto the LR band of the encoded/reconstructed grid. Then

    * acquired (truncate on the encoded grid, then crop): ``b = S·C·Π_enc X``;
    * retrospective (crop, then truncate): ``a = S·Π_rec·C X``;

    (both exactly, with the unitary FFTs and the truncation's factor ``1/s``: an LR pixel is the
    band-limited HR image at that point). Hence ``b − a = S·(v₁ − v₂)`` with

    * ``v₁ = (I − Π_rec)·C·Π_enc X``: what cropping the band-limited image puts outside the band;
    * ``v₂ = Π_rec·C·(I − Π_enc) X``: what cropping the out-of-band content puts inside it;

    and, as ``S`` keeps a subset of the pixels (``‖S v‖ ≤ ‖v‖``) and a band-limited image keeps
    ``1/s`` of its norm on the subsampled grid (``‖S v₂‖ = ‖v₂‖/s``),
    ``‖b − a‖ ≤ ‖v₁‖ + ‖v₂‖/s``. Both terms live at the crop's border (a crop of a smooth image
    changes only its periodic wrap), so the bound and the difference shrink with the border's share.
    The same bound holds for the magnitudes (``| |b| − |a| | ≤ |b − a|`` per pixel and coil).

    Returns ``acquired``, ``retrospective`` (LR images), ``difference`` (``‖b − a‖``) and ``bound``
    (``‖v₁‖ + ‖v₂‖/s``), norms over the last two axes.
    """
    s = check_scale(scale)
    H, W = int(hr_crop[0]), int(hr_crop[1])
    Hk, Wk = kspace.shape[-2:]
    if Hk % s or Wk % s or H % s or W % s or (Hk - H) % (2 * s) or (Wk - W) % (2 * s):
        raise ValueError(f"encoded {Hk}x{Wk} and crop {H}x{W} must both divide by {s}, and their margins by {2 * s}, "
                         f"for the LR grids to line up")
    lr, lr_enc = (H // s, W // s), (Hk // s, Wk // s)
    acquired = center_crop_2d(ifft2c(crop_kspace(kspace, lr_enc)), lr)
    images = ifft2c(kspace)
    cropped = center_crop_2d(images, (H, W))
    retrospective = ifft2c(crop_kspace(fft2c(cropped), lr))
    low = _band_projection(images, lr_enc)
    low_cropped = center_crop_2d(low, (H, W))
    v1 = low_cropped - _band_projection(low_cropped, lr)
    v2 = _band_projection(center_crop_2d(images - low, (H, W)), lr)
    norm = lambda x: x.flatten(-2).norm(dim=-1)  # noqa: E731
    return {"acquired": acquired, "retrospective": retrospective, "difference": norm(acquired - retrospective),
            "bound": norm(v1) + norm(v2) / s}
