"""Baselines under ICONet's interface: LR image ``(B, C, h, w)`` in, :class:`SROutput` out.

* :class:`BicubicSR`: bicubic upsampling of the zero-filled LR input (no parameters).
* :class:`SincSR`: zero-padding in k-space ("sinc" interpolation, no parameters).
* :class:`UnetSR`: fastMRI's U-Net on the LR grid, then a pixel-shuffle upsampler.
* :class:`T2NetLike`: two EDSR-style branches (reconstruction and SR) with texture
  transfer from the reconstruction features into the SR branch; our own design
  from T2Net's published description, not T2Net's code.

``C`` is 1 (magnitude) or 2 (real, imag), as for ICONet. Baselines without a
reconstruction branch return ``rec_stages=[]`` and ``sr_stages=[sr]``. All of
them are :class:`~.common.SRModel` subclasses: the input check and the per-slice
normalisation live there. The two parameter-free ones default to
``normalize=False``: they are linear in their input (the magnitude of the sinc
interpolation is positively homogeneous), so normalising would change their
output only by float rounding, and without it ``BicubicSR`` is exactly
``F.interpolate``. Their (untrained) loss is then in image units.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fastmri.models import Unet
from torch import nn

from ..physics.operators import sinc_upsample
from .blocks import ResBlock
from .common import SRModel, SROutput, channels_to_complex, complex_to_channels, upsample_bicubic

__all__ = ["BicubicSR", "SincSR", "UnetSR", "T2NetLike", "PixelShuffleUpsampler", "windowed"]


class BicubicSR(SRModel):
    """Bicubic upsampling of the zero-filled LR input (``align_corners=False``).

    Args:
        scale: super-resolution factor (2, 4 or 8).
        in_chans: 1 (magnitude) or 2 (real, imag; interpolated channel-wise).
        normalize, norm_eps: see :class:`~.common.SRModel`.

    Its magnitude output is the literal interpolation, overshoot below 0 included
    (``nonnegative = False``), as the literature reports the baseline.
    """

    nonnegative = False

    def __init__(self, scale: int = 2, in_chans: int = 1, normalize: bool = False, norm_eps: float = 1e-12) -> None:
        super().__init__(scale, in_chans, normalize, norm_eps)

    def run(self, x: torch.Tensor, *args: object) -> SROutput:
        """``(B, C, h, w) -> sr (B, C, s·h, s·w)``."""
        sr = upsample_bicubic(x, self.scale)
        return SROutput(sr=sr, sr_stages=[sr], rec_stages=[])


class SincSR(SRModel):
    """Zero-padding ("sinc") interpolation in k-space via :func:`sinc_upsample`.

    Complex mode (``in_chans=2``) interpolates the complex image exactly. In
    magnitude mode the input has lost its phase, so the magnitude image is
    treated as a real image with zero phase and the output is the magnitude of
    its sinc interpolation; for real anatomy this differs from interpolating the
    (unknown) complex image and shows more ringing at edges.

    Args:
        scale: super-resolution factor (2, 4 or 8).
        in_chans: 1 (magnitude) or 2 (real, imag).
        normalize, norm_eps: see :class:`~.common.SRModel`.
    """

    def __init__(self, scale: int = 2, in_chans: int = 1, normalize: bool = False, norm_eps: float = 1e-12) -> None:
        super().__init__(scale, in_chans, normalize, norm_eps)

    def run(self, x: torch.Tensor, *args: object) -> SROutput:
        """``(B, C, h, w) -> sr (B, C, s·h, s·w)``."""
        grid = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        if self.in_chans == 2:
            sr = complex_to_channels(sinc_upsample(channels_to_complex(x), grid))
        else:
            sr = sinc_upsample(x, grid).abs()
        sr = sr.to(x.dtype)
        return SROutput(sr=sr, sr_stages=[sr], rec_stages=[])


class PixelShuffleUpsampler(nn.Sequential):
    """``log2(scale)`` x (conv3x3 C -> 4C, PixelShuffle(2)): ``(B, C, h, w) -> (B, C, sh, sw)``.

    Args:
        channels: feature width ``C``.
        scale: power-of-two factor.
    """

    def __init__(self, channels: int, scale: int) -> None:
        layers: List[nn.Module] = []
        for _ in range(int(round(math.log2(scale)))):
            layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
        super().__init__(*layers)


class UnetSR(SRModel):
    """fastMRI U-Net on the LR grid followed by a pixel-shuffle upsampler.

    ::

        x' = x + Unet(x)                                 LR de-aliasing, residual
        sr = tail(PixelShuffleUpsampler(head(x'))) + bicubic(x')

    fastMRI's U-Net average-pools ``num_pool_layers`` times; its up path pads
    odd sizes by one pixel, but a side that pools down to zero pixels fails
    (e.g. 13 with 4 pools), and so does a 1x1 bottleneck in training
    (InstanceNorm). The input is therefore replicate-padded at the bottom and
    right to a multiple of ``2**num_pool_layers`` (at least twice that) and
    the U-Net output cropped back. At fastMRI sizes (160, 80) this is a no-op.

    Args:
        scale: super-resolution factor (2, 4 or 8).
        in_chans: 1 (magnitude) or 2 (real, imag).
        chans: U-Net channels at the top level (also the upsampler width).
        num_pool_layers: U-Net depth.
        drop_prob: U-Net dropout.
        normalize: per-slice intensity normalisation as in ICONet.
        norm_eps: floor of the per-slice scale.
        eval_window: ``[h, w]`` on the LR grid: outside training, run the U-Net on overlapping
            windows of this size, blended with linear ramps (:func:`windowed`), instead of on the
            whole slice. fastMRI's U-Net normalises its features over what it sees (InstanceNorm);
            a model trained on patches (``data.patch_size``, HR) then sees windows like those it
            was trained on. On the demo, windows 1.5 times the LR patch's rows (its full width)
            brought patch training within 0.2 dB / 0.01 SSIM of whole-slice training, where whole
            slices fell 0.016 SSIM short (docs/REAL_DATA.md, "Patch training"). ``None``: whole slices.
    """

    #: Init args that change how the network runs, not its weights: a checkpoint's may be overridden.
    RUNTIME_ARGS = ("eval_window",)

    def __init__(
        self,
        scale: int = 2,
        in_chans: int = 1,
        chans: int = 32,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
        normalize: bool = True,
        norm_eps: float = 1e-12,
        eval_window: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__(scale, in_chans, normalize, norm_eps)
        if eval_window is not None and (len(eval_window) != 2 or min(int(n) for n in eval_window) < 1):
            raise ValueError(f"eval_window must be two positive sizes [h, w] on the LR grid, got {eval_window}")
        self.eval_window = None if eval_window is None else (int(eval_window[0]), int(eval_window[1]))
        self.num_pool_layers = num_pool_layers
        self.unet = Unet(in_chans, in_chans, chans, num_pool_layers, drop_prob)
        self.up_head = nn.Conv2d(in_chans, chans, 3, padding=1)
        self.upsampler = PixelShuffleUpsampler(chans, self.scale)
        self.up_tail = nn.Conv2d(chans, in_chans, 3, padding=1)

    def _unet_padded(self, x: torch.Tensor) -> torch.Tensor:
        # Pad to a multiple of 2**pools, and to at least two such blocks so that the
        # bottleneck has more than one pixel (InstanceNorm rejects 1x1 maps in training).
        multiple = 2**self.num_pool_layers
        h, w = x.shape[-2:]
        pad_h = max(-(-h // multiple), 2) * multiple - h
        pad_w = max(-(-w // multiple), 2) * multiple - w
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        return self.unet(padded)[..., :h, :w]

    def run(self, image: torch.Tensor, *args: object) -> SROutput:
        """``(B, C, h, w) -> sr (B, C, s·h, s·w)``."""
        if self.eval_window is not None and not self.training:
            refined = image + windowed(self._unet_padded, image, self.eval_window)
        else:
            refined = image + self._unet_padded(image)
        sr = self.up_tail(self.upsampler(self.up_head(refined))) + upsample_bicubic(
            refined, self.scale
        )
        return SROutput(sr=sr, sr_stages=[sr], rec_stages=[])


class T2NetLike(SRModel):
    """Two-branch joint reconstruction + SR network in the spirit of T2Net.

    ::

        R0 = head_rec(x), S0 = head_sr(x)
        for g = 1..G:                                  G = num_transfers groups
            R_g = ResBlocks_g(R_{g-1})                 reconstruction branch
            S_g = ResBlocks_g(S_{g-1})                 SR branch
            S_g = S_g + conv1x1(cat(S_g, R_g))         texture transfer R -> S
        rec = tail_rec(R_G) + x                        LR reconstruction
        sr  = tail_sr(PixelShuffleUpsampler(S_G)) + bicubic(rec)

    Residual blocks are EDSR-style (no batch norm). ``num_blocks`` blocks per
    branch are split as evenly as possible into ``num_transfers`` groups,
    each followed by a transfer. The SR residual is on the upsampled
    reconstruction, which also ties the reconstruction tail to the SR output.
    Train with ``MultiStageLoss(supervise="last_stage")`` and the default
    weights (0.8 SR, 0.2 reconstruction), T2Net's split.

    Args:
        scale: super-resolution factor (2, 4 or 8).
        in_chans: 1 (magnitude) or 2 (real, imag).
        width: feature width.
        num_blocks: residual blocks per branch.
        num_transfers: number of texture-transfer points (at most ``num_blocks``).
        res_scale: residual scaling of the blocks.
        normalize: per-slice intensity normalisation as in ICONet.
        norm_eps: floor of the per-slice scale.
    """

    def __init__(
        self,
        scale: int = 2,
        in_chans: int = 1,
        width: int = 64,
        num_blocks: int = 8,
        num_transfers: int = 4,
        res_scale: float = 1.0,
        normalize: bool = True,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__(scale, in_chans, normalize, norm_eps)
        if num_blocks < 1 or num_transfers < 1:
            raise ValueError(
                f"num_blocks and num_transfers must be >= 1, got {num_blocks}, {num_transfers}"
            )
        groups = min(num_transfers, num_blocks)
        base, extra = divmod(num_blocks, groups)
        sizes = [base + (1 if g < extra else 0) for g in range(groups)]

        def group(n: int) -> nn.Sequential:
            return nn.Sequential(*[ResBlock(width, res_scale) for _ in range(n)])

        self.head_rec = nn.Conv2d(in_chans, width, 3, padding=1)
        self.head_sr = nn.Conv2d(in_chans, width, 3, padding=1)
        self.rec_groups = nn.ModuleList([group(n) for n in sizes])
        self.sr_groups = nn.ModuleList([group(n) for n in sizes])
        self.transfers = nn.ModuleList([nn.Conv2d(2 * width, width, 1) for _ in sizes])
        self.tail_rec = nn.Conv2d(width, in_chans, 3, padding=1)
        self.upsampler = PixelShuffleUpsampler(width, self.scale)
        self.tail_sr = nn.Conv2d(width, in_chans, 3, padding=1)

    def run(self, image: torch.Tensor, *args: object) -> SROutput:
        """``(B, C, h, w)`` -> ``sr (B, C, s·h, s·w)`` and ``rec_stages=[rec (B, C, h, w)]``."""
        rec_feats = self.head_rec(image)
        sr_feats = self.head_sr(image)
        for rec_group, sr_group, transfer in zip(self.rec_groups, self.sr_groups, self.transfers):
            rec_feats = rec_group(rec_feats)
            sr_feats = sr_group(sr_feats)
            sr_feats = sr_feats + transfer(torch.cat([sr_feats, rec_feats], dim=1))
        rec = self.tail_rec(rec_feats) + image
        sr = self.tail_sr(self.upsampler(sr_feats)) + upsample_bicubic(rec, self.scale)
        return SROutput(sr=sr, sr_stages=[sr], rec_stages=[rec])


def _starts(size: int, window: int) -> list:
    """Window origins covering ``[0, size)``: stride ``window // 2`` (half overlap), the last one flush with the end."""
    if window >= size:
        return [0]
    stride = max(1, window // 2)
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


def _ramp(n: int, device, dtype) -> torch.Tensor:
    """Blending weights of a window of ``n`` pixels: a triangle, positive everywhere (its ends are 1/(n+1))."""
    i = torch.arange(n, device=device, dtype=dtype)
    return torch.minimum(i + 1, n - i) / ((n + 1) / 2)


def windowed(fn, image: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``fn`` applied to overlapping ``window``-sized tiles of ``image`` ``(B, C, h, w)``, blended.

    Tiles overlap by half a window (the last one flush with the border); each
    output pixel is the weighted mean of the tiles covering it, with separable
    triangular weights, so seams are smooth. A window as large as the image in
    both directions is ``fn(image)``.
    """
    h, w = image.shape[-2:]
    wh, ww = min(int(window[0]), h), min(int(window[1]), w)
    if (wh, ww) == (h, w):
        return fn(image)
    out = torch.zeros_like(image)
    total = torch.zeros(h, w, device=image.device, dtype=image.dtype)
    weight = _ramp(wh, image.device, image.dtype)[:, None] * _ramp(ww, image.device, image.dtype)[None, :]
    for r in _starts(h, wh):
        for c in _starts(w, ww):
            out[..., r:r + wh, c:c + ww] += weight * fn(image[..., r:r + wh, c:c + ww])
            total[r:r + wh, c:c + ww] += weight
    return out / total
