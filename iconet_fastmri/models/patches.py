"""Training patches cut from whole slices *after* the acquisition.

``data.patch_size`` trains on part of each slice to save activation memory.
The whole slice is degraded first (:meth:`~iconet_fastmri.physics.acquisition.Acquisition.simulate`),
its network input is formed (:func:`~iconet_fastmri.models.network_input.network_input`,
coil maps included), and only then is the patch cut, from every tensor at once
(:func:`cut_patches`). What the network sees in a patch is therefore exactly what
it sees in the same rows of the whole slice at test time:

* the **normalisation scale** is the whole slice's (:func:`~.common.per_slice_scale`
  of the whole input, carried as ``NetworkInput.norm_scale``), so a patch of
  background stays background-sized instead of being divided by its own
  noise level (the defect of cutting first: noise became an O(1) target with
  a large weight in the loss, and the model painted it over test backgrounds);
* the aliasing is that of the whole field of view, and the targets have no
  artificial edges at the patch border;
* the measured k-space of the patch is ``M · F_patch(crop(F⁻¹ y))`` along the
  cut axis: with a mask that is constant along that axis (the only patches
  :func:`~iconet_fastmri.physics.masks.check_patch_on_grid` allows) this equals
  ``M · F_patch(crop(x))`` for the true image ``x``, so data consistency on the
  patch is exact.

The patch origin is drawn on the HR grid by the data transform, aligned to the
scale (``IconetSample.patch``); on a stage grid ``f`` times coarser, the rows
``r0/f .. (r0 + ph)/f`` are kept.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..physics.degradation import Degraded
from .common import per_slice_scale
from .network_input import NetworkInput

__all__ = ["cut_patches", "whole_slices", "warn_window_statistics", "WindowStatisticsWarning"]


class WindowStatisticsWarning(UserWarning):
    """A model normalises its features over the window it sees, which patch training changes."""


def warn_window_statistics(model: nn.Module, patch_size: Optional[Sequence[int]]) -> bool:
    """Warn when ``model`` is trained on patches, depends on the window it sees, and is evaluated on whole slices.

    InstanceNorm (fastMRI's U-Net, hence :class:`~iconet_fastmri.models.UnetSR`) and
    GroupNorm divide each feature map by its statistics over what the network sees, and
    such networks reach far beyond a patch: trained on patches, they learn from less of
    the slice than they are tested on. Measured on the demo (docs/REAL_DATA.md, "Patch
    training"), U-Net SR on half-height patches, evaluated on whole slices: 0.59 dB / 0.028
    SSIM below whole-slice training after 240 steps (0.09 dB / 0.006 when the network saw the
    whole slice and only the loss was cut to the patch), 0.04 dB / 0.016 after the demo's
    1152; evaluated on windows 1.5 times its LR patch (``UnetSR.eval_window``), -0.18 dB /
    0.009. No warning when ``eval_window`` is set. ICONet's LayerNorm is per pixel: level on
    patches. Returns whether it warned.
    """
    if not patch_size or getattr(model, "eval_window", None) is not None:
        return False
    norms = sorted({type(m).__name__ for m in model.modules()
                    if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm))})
    if norms:
        s = int(getattr(model, "scale", 1))
        window = f"[{3 * int(patch_size[0]) // (2 * s)}, {int(patch_size[1]) // s}]"
        advice = (f"evaluate it on LR windows 1.5 times its patch's rows (--model.model.init_args.eval_window "
                  f"\"{window}\", also over a checkpoint), or train it on whole slices"
                  if hasattr(model, "eval_window") else "train it on whole slices where memory allows")
        warnings.warn(
            f"data.patch_size {list(patch_size)}: {type(model).__name__} normalises its features over the window it "
            f"sees ({', '.join(norms)}) and reaches beyond the patch, so patches train it on less of the slice than "
            f"it is validated on (U-Net SR on the demo: 0.016 SSIM below whole-slice training; docs/REAL_DATA.md, "
            f"'Patch training'): {advice}.",
            WindowStatisticsWarning, stacklevel=2)
    return bool(norms)


def whole_slices(patch: torch.Tensor, hr_shape: Sequence[int]) -> bool:
    """Whether every ``(r0, c0, ph, pw)`` row of ``patch`` ``(B, 4)`` covers the whole HR grid."""
    H, W = int(hr_shape[-2]), int(hr_shape[-1])
    return bool((patch[:, 2] == H).all()) and bool((patch[:, 3] == W).all()) and not bool(patch[:, :2].any())


def _centred_1d(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    x = torch.fft.ifftshift(x, dim=dim)
    x = (torch.fft.ifft if inverse else torch.fft.fft)(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)


def _crop(t: torch.Tensor, starts: torch.Tensor, size: Tuple[int, int], factor: int) -> torch.Tensor:
    """Per-sample crop ``t[b, ..., r:r+h, c:c+w]`` with ``(r, c) = starts[b] / factor``."""
    h, w = size[0] // factor, size[1] // factor
    rows = [t[b, ..., int(r) // factor: int(r) // factor + h, int(c) // factor: int(c) // factor + w]
            for b, (r, c) in enumerate(starts.tolist())]
    return torch.stack(rows)


def _crop_axis(t: torch.Tensor, starts: Sequence[int], size: int, dim: int) -> torch.Tensor:
    return torch.stack([t[b].narrow(dim, int(r), size) for b, r in enumerate(starts)])


def _crop_kspace(k: torch.Tensor, starts: torch.Tensor, size: Tuple[int, int], factor: int) -> torch.Tensor:
    """The k-space of the cropped image, transforming only along the axes that are cut.

    A 1D transform along the cut axis keeps the k-space lines that were not
    acquired (along the other axis) exactly zero.
    """
    for axis, dim in ((0, -2), (1, -1)):
        part = size[axis] // factor
        if part == k.shape[dim]:
            continue
        image = _centred_1d(k, dim, inverse=True)
        image = _crop_axis(image, [int(r) // factor for r in starts[:, axis].tolist()], part, dim)
        k = _centred_1d(image, dim, inverse=False)
    return k


def cut_patches(
    deg: Degraded,
    inputs: NetworkInput,
    patch: Optional[torch.Tensor],
    norm_eps: float = 1e-12,
    also: Sequence[Sequence[torch.Tensor]] = (),
) -> Tuple[Degraded, NetworkInput, tuple]:
    """The patches ``patch`` ``(B, 4)`` = ``(r0, c0, ph, pw)`` (HR pixels) of whole-slice ``deg`` and ``inputs``.

    Every image is cropped on its own grid, k-space through the image domain
    (see the module docstring), and the returned input carries the whole
    slices' ``norm_scale`` (``per_slice_scale(inputs.image, norm_eps)``,
    unless ``inputs`` already has one). All patches of a batch have one size.
    ``also``: further lists of whole-slice images on stage grids (e.g. the
    complex targets of the phase loss), returned cut as the third element.
    With ``patch`` ``None`` or whole slices, everything is returned as it is.
    """
    if patch is None or whole_slices(patch, deg.hr_target.shape):
        return deg, inputs, tuple(also)
    H, W = deg.hr_target.shape[-2:]
    sizes = {tuple(p) for p in patch[:, 2:].tolist()}
    if len(sizes) != 1:
        raise ValueError(f"patches of one batch must share a size, got {sorted(sizes)}")
    size = next(iter(sizes))
    s = deg.scale
    starts = patch[:, :2].to("cpu")
    if size[0] % s or size[1] % s or bool((starts % s).any()):
        raise ValueError(f"patch origin and size must be multiples of the scale {s}, got {patch.tolist()}")
    if bool((starts[:, 0] + size[0] > H).any()) or bool((starts[:, 1] + size[1] > W).any()) or bool((starts < 0).any()):
        raise ValueError(f"patches {patch.tolist()} do not fit the HR grid {(int(H), int(W))}")

    def image(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else _crop(t, starts, size, H // t.shape[-2])

    def kspace(t: torch.Tensor) -> torch.Tensor:
        return _crop_kspace(t, starts, size, H // t.shape[-2])

    lr_factor = H // deg.lr_kspace.shape[-2]
    mask = deg.mask
    if mask.shape[-2] > 1 or mask.shape[-1] > 1:  # a broadcast axis (size 1) needs no crop
        full = mask.expand(*mask.shape[:-2], deg.lr_kspace.shape[-2], deg.lr_kspace.shape[-1])
        mask = _crop(full, starts, size, lr_factor)
        mask = mask[..., :1, :] if deg.mask.shape[-2] == 1 else mask
        mask = mask[..., :, :1] if deg.mask.shape[-1] == 1 else mask
    cut = replace(
        deg,
        hr_target=image(deg.hr_target),
        lr_kspace=kspace(deg.lr_kspace),
        lr_clean=image(deg.lr_clean),
        lr_observed=kspace(deg.lr_observed) * mask,
        lr_input=image(deg.lr_input),
        mask=mask,
        stage_targets=[image(t) for t in deg.stage_targets],
        lr_input_complex=image(deg.lr_input_complex),
        lr_clean_complex=image(deg.lr_clean_complex),
    )
    scale = inputs.norm_scale if inputs.norm_scale is not None else per_slice_scale(inputs.image, norm_eps)
    maps = image(inputs.maps)
    dc = dict(inputs.dc)
    if dc:
        dc.update(measured_kspace=cut.lr_observed, mask=cut.mask)
        if "maps" in dc:
            dc["maps"] = maps
    extra = tuple([image(t) for t in images] for images in also)
    return cut, NetworkInput(image(inputs.image), maps, dc, norm_scale=scale), extra
