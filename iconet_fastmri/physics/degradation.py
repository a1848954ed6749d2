"""Low-resolution acquisition simulation from HR k-space (batched, device-agnostic).

The forward model follows the T2Net / MINet line of joint reconstruction +
super-resolution work:

1. HR per-coil complex images ``x`` on the HR grid ``(H, W)`` (for fastMRI the
   320x320 centre crop) are Fourier transformed: ``K = fft2c(x)``.
2. k-space truncation: the centred ``(H/s, W/s)`` block of ``K`` is the
   k-space a scanner with an s-times coarser matrix would acquire. Under the
   orthonormal FFT truncation scales image intensities by ``s`` (more exactly
   ``sqrt(HW / hw)``); :func:`~.operators.crop_kspace` multiplies by ``sqrt(hw / HW)`` so that
   intensities are preserved (a flat region keeps its value).
3. The truncated k-space is undersampled with a mask drawn **on the LR grid**
   (what the scanner acquires), with optional complex Gaussian noise.

Images are combined over coils by root-sum-of-squares, which for one coil is
the magnitude: one rule for single-coil (``reconstruction_esc``) and
multi-coil (``reconstruction_rss``) data.

Shapes: images are returned with a channel dimension, ``(B, 1, H, W)``;
k-space keeps the coil dimension, ``(B, C, h, w)``.

Speed: for even grids the centring shifts are folded away. With ``F =
fft2(x)`` (unshifted), the centred LR k-space is ``a * S ⊙ G`` where ``G`` is
the wrapped low-frequency corner block of ``F`` (four slice copies), ``S`` a
+-1 sign pattern and ``a = sqrt(hw/HW)``; the LR image is then
``a * M ⊙ ifft2(G)`` with ``M = (-1)^(i+j)``. The sign patterns only touch
LR-sized data, are folded into the mask multiply, and vanish under magnitude
and RSS. For multi-coil data (only the RSS images are returned) the LR
k-space ``a * S ⊙ G`` is gathered, scaled and signed in one pass, and the
RSS of ``ifft2`` of it is rolled back by ``(h/2, w/2)`` on the small
coil-combined grid. On the CPU the HR part (FFT, block gathers, HR RSS) of a
large batch runs in chunks of about 16 MiB of HR data (large fresh allocations
are page-faulted in on first touch, which costs about as much as the FFT),
writing into whole-batch LR buffers; the LR part then runs once for the whole
batch (no per-chunk calls, no concatenation). The RSS avoids the slow
reduction over the (real, imag) axis. Odd grids take the exact general path
through :func:`fft2c`, on the whole batch at once (no chunking: fastMRI's
grids are even, so that path is rare and was left simple).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .fft import (
    CHUNK_ABOVE_BYTES,
    CHUNK_BYTES,
    as_complex,
    checkerboard,
    chunk_bounds,
    fft2c,
    functional_only,
    ifft2c,
)
from ..registry import Registry
from .operators import check_scale, crop_kspace, intensity_factor, lr_shape_for, rss

__all__ = ["Degraded", "KSpaceDegradation", "KSPACE_STEPS", "register_kspace_step", "build_kspace_steps"]

#: Registry of acquisition effects on the acquired LR k-space (see ``KSpaceDegradation(steps=...)``);
#: other packages add theirs through the entry-point group ``iconet_fastmri.kspace_steps``.
KSPACE_STEPS = Registry("k-space step", "iconet_fastmri.kspace_steps")


def register_kspace_step(name: str, factory: Callable[..., Any], overwrite: bool = False) -> None:
    """Register an acquisition effect: ``factory(**options)`` returns ``step(kspace, mask) -> kspace``."""
    KSPACE_STEPS.register(name, factory, overwrite=overwrite)


def build_kspace_steps(specs: Sequence[Mapping[str, Any]]) -> List[Callable[..., torch.Tensor]]:
    """Steps from plain specs, ``[{"name": "my_step", **options}, ...]`` (as configs give them).

    Unknown names and options are ``ValueError`` at once (see :class:`~iconet_fastmri.registry.Registry`).
    """
    steps = []
    for spec in specs:
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"a k-space step is a dict with a 'name' and its options, got {spec!r}")
        options = {k: v for k, v in spec.items() if k != "name"}
        steps.append(KSPACE_STEPS.build(spec["name"], **options))
    return steps

@dataclass
class Degraded:
    """Everything the degradation produces for one batch.

    Images are ``(B, 1, ·, ·)`` float (RSS over coils); k-space is ``(B, C, h, w)`` complex.
    """

    hr_target: torch.Tensor
    lr_kspace: torch.Tensor
    lr_clean: torch.Tensor
    lr_observed: torch.Tensor
    lr_input: torch.Tensor
    mask: torch.Tensor
    stage_targets: List[torch.Tensor]
    scale: int
    lr_input_complex: Optional[torch.Tensor] = None
    lr_clean_complex: Optional[torch.Tensor] = None

    @property
    def rec_targets(self) -> List[torch.Tensor]:
        """Targets of the reconstruction prior at each stage's input grid.

        Stage 1 works on the LR grid (``lr_clean``); stage k > 1 on the grid of
        stage k-1's output, whose artifact-free image is ``stage_targets[k-2]``.
        """
        return [self.lr_clean] + list(self.stage_targets[:-1])


def _wrapped_index(part: int, full: int, device: torch.device) -> torch.Tensor:
    # Row/column indices of the centred low-frequency block inside an unshifted spectrum.
    return (torch.arange(part, device=device) - part // 2) % full


def _low_block(
    spectrum: torch.Tensor,
    shape: Tuple[int, int],
    pattern: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The wrapped low-frequency block ``spectrum[..., rows, cols]`` of an unshifted spectrum.

    Same values as indexing with :func:`_wrapped_index` rows and columns, built
    from the four corner blocks by slice copies (one pass, no index kernel).
    With a real ``pattern`` ``(h, w)`` the block is multiplied by it in the same pass.
    ``out`` (not under autograd): write the block there, e.g. one chunk's rows of a
    whole-batch buffer.
    """
    H, W = spectrum.shape[-2], spectrum.shape[-1]
    h, w = shape
    hn, wn = h // 2, w // 2  # negative frequencies (taken from the end of the spectrum)
    hp, wp = h - hn, w - wn  # zero and positive frequencies (from the start)
    corners = (
        ((slice(None, hn), slice(None, wn)), (slice(H - hn, None), slice(W - wn, None))),
        ((slice(None, hn), slice(wn, None)), (slice(H - hn, None), slice(None, wp))),
        ((slice(hn, None), slice(None, wn)), (slice(None, hp), slice(W - wn, None))),
        ((slice(hn, None), slice(wn, None)), (slice(None, hp), slice(None, wp))),
    )
    if pattern is not None and functional_only(spectrum):
        return _low_block(spectrum, shape) * pattern
    if out is None:
        out = spectrum.new_empty(*spectrum.shape[:-2], h, w)
    if pattern is None:
        for (dr, dc), (sr, sc) in corners:
            out[..., dr, dc] = spectrum[..., sr, sc]
        return out
    # Multiply through the real views with the pattern in the interleaved (h, w, 2) layout.
    src, dst = torch.view_as_real(spectrum), torch.view_as_real(out)
    pat = pattern.to(src.dtype).unsqueeze(-1).expand(h, w, 2).contiguous()
    for (dr, dc), (sr, sc) in corners:
        torch.mul(src[..., sr, sc, :], pat[dr, dc], out=dst[..., dr, dc, :])
    return out


class KSpaceDegradation(nn.Module):
    """Simulate an LR, undersampled acquisition from HR coil images (batched).

    Args:
        scale: super-resolution factor s (2, 4 or 8); the LR grid is ``(H/s, W/s)``.
        mask_func: a mask function from :func:`iconet_fastmri.physics.masks.create_mask`,
            used when ``forward`` gets no mask (one draw per batch element).
            ``None`` with no mask passed means fully sampled LR k-space.
        noise_std: standard deviation of complex Gaussian noise added to each
            acquired LR k-space sample (per real/imaginary part, in the units
            of the intensity-preserving LR k-space).
        steps: further acquisition effects, applied in order to the acquired
            LR k-space after masking and noise: each is called as
            ``step(kspace, mask) -> kspace`` on centred ``(B, C, h, w)``
            complex k-space, and its output is masked again (samples that were
            not acquired stay zero). Build them by name with
            :func:`build_kspace_steps` (registry :data:`KSPACE_STEPS`). With
            steps, the LR input is recomputed from the changed samples (one
            more inverse FFT of the LR grid).
    """

    def __init__(
        self,
        scale: int,
        mask_func: Optional[Callable] = None,
        noise_std: float = 0.0,
        steps: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = (),
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.mask_func = mask_func
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.steps = list(steps)

    @property
    def num_stages(self) -> int:
        return int(round(math.log2(self.scale)))

    def _draw_masks(self, batch: int, lr: Tuple[int, int], device: torch.device) -> torch.Tensor:
        if self.mask_func is None:
            return torch.ones(batch, 1, *lr, device=device)
        masks = [torch.as_tensor(self.mask_func(lr)[0], dtype=torch.float32) for _ in range(batch)]
        return torch.stack([m.expand(*lr) for m in masks]).unsqueeze(1).to(device)

    @staticmethod
    def _normalise_mask(mask: torch.Tensor, batch: int, lr: Tuple[int, int]) -> torch.Tensor:
        mask = torch.as_tensor(mask).to(torch.float32)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.dim() != 4 or mask.shape[-2:] != torch.Size(lr) and not (
            mask.shape[-2] in (1, lr[0]) and mask.shape[-1] in (1, lr[1])
        ):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit the LR grid {lr} "
                f"(expected (h, w), (B, h, w) or (B, 1, h, w))"
            )
        return mask.expand(batch, 1, *lr)

    def forward(self, hr_images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Degraded:
        """Degrade a batch.

        Args:
            hr_images: HR per-coil complex images ``(B, C, H, W)``.
            mask: optional LR-grid mask ``(h, w)``, ``(B, h, w)`` or ``(B, 1, h, w)``.

        Returns:
            :class:`Degraded`.
        """
        if hr_images.dim() != 4:
            raise ValueError(
                f"hr_images must be (B, C, H, W) complex, got shape {tuple(hr_images.shape)}"
            )
        x = as_complex(hr_images)
        batch, coils, H, W = x.shape
        lr = lr_shape_for((H, W), self.scale)
        if mask is None:
            mask = self._draw_masks(batch, lr, x.device)
        else:
            mask = self._normalise_mask(mask.to(x.device), batch, lr)

        with torch.autocast(device_type=x.device.type, enabled=False):
            grids = [(H // 2**k, W // 2**k) for k in range(self.num_stages, -1, -1)]
            all_even = all(g[0] % 2 == 0 and g[1] % 2 == 0 for g in grids)
            single = coils == 1
            noise = None
            if self.noise_std > 0:  # drawn for the whole batch, as randn_like(LR k-space)
                noise = torch.randn(batch, coils, *lr, dtype=x.dtype, device=x.device)
                noise = noise * self.noise_std
            if all_even:
                merged = self._fast_parts(x, mask, lr, grids, single, noise, with_hr_target=True)
            else:
                merged = self._general(x, mask, lr, grids, noise)
                merged = merged + (rss(merged[1]), rss(merged[3]), rss(x))
        (lr_kspace, lr_clean_c, lr_observed, lr_input_c, stage_targets, lr_clean, lr_input,
         hr_target) = merged
        stage_targets.append(hr_target)
        if self.steps:
            for step in self.steps:
                lr_observed = step(lr_observed, mask) * mask
            lr_input_c = ifft2c(lr_observed)
            lr_input = rss(lr_input_c)
        return Degraded(
            hr_target=hr_target,
            lr_kspace=lr_kspace,
            lr_clean=lr_clean,
            lr_observed=lr_observed,
            lr_input=lr_input,
            mask=mask,
            stage_targets=stage_targets,
            scale=self.scale,
            lr_input_complex=lr_input_c if single else None,
            lr_clean_complex=lr_clean_c if single else None,
        )

    @staticmethod
    def _chunks(x: torch.Tensor) -> List[Tuple[int, int]]:
        """Batch ranges whose HR FFT runs at once: on the CPU, ~16 MiB of HR data per chunk.

        Large fresh CPU allocations (above glibc's 32 MiB mmap threshold) are
        page-faulted in on first touch, which costs about as much as the FFT;
        chunk-sized temporaries are reused by the C allocator instead. Under
        autograd (``out=`` writes are not differentiable) the batch is one chunk.
        """
        batch = x.shape[0]
        sample_bytes = x[0].numel() * x.element_size() if batch else 0
        if (x.device.type != "cpu" or batch < 2 or batch * sample_bytes <= CHUNK_ABOVE_BYTES
                or functional_only(x)):
            return [(0, batch)]
        per = max(1, CHUNK_BYTES // max(sample_bytes, 1))
        # Never a single 2D FFT per chunk (see iconet_fastmri.physics.fft.chunk_bounds).
        return chunk_bounds(batch, per, min_size=1 if x.shape[1] >= 2 else 2)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like) * self.noise_std  # complex randn: var split over re/im

    def _fast(self, x, mask, lr, grids):
        """The 5-tuple of :meth:`_general`, complex LR images included."""
        return self._fast_parts(x, mask, lr, grids, complex_images=True)[:5]

    def _spectral_blocks(self, x, lr, grids, lr_pattern):
        """The unshifted HR spectrum's LR block (times ``lr_pattern`` if given), the blocks of the
        intermediate grids and the HR RSS target, each for the whole batch.

        Only this part sees HR data: on the CPU it runs in chunks (:meth:`_chunks`) writing
        into whole-batch LR buffers, and everything after it works on the whole batch at once.
        """
        chunks = self._chunks(x)
        if len(chunks) == 1:
            spectrum = torch.fft.fft2(x, norm="ortho")  # unshifted: the FFT floor
            blocks = [_low_block(spectrum, g) for g in grids[1:-1]]
            return _low_block(spectrum, lr, lr_pattern), blocks, rss(x)
        batch, coils = x.shape[:2]
        block = x.new_empty(batch, coils, *lr)
        blocks = [x.new_empty(batch, coils, *g) for g in grids[1:-1]]
        hr_target = None
        for start, stop in chunks:
            sub = x[start:stop]
            spectrum = torch.fft.fft2(sub, norm="ortho")
            _low_block(spectrum, lr, lr_pattern, out=block[start:stop])
            for g, buffer in zip(grids[1:-1], blocks):
                _low_block(spectrum, g, out=buffer[start:stop])
            del spectrum
            target = rss(sub)
            if hr_target is None:
                hr_target = target.new_empty(batch, *target.shape[1:])
            hr_target[start:stop] = target
        return block, blocks, hr_target

    def _fast_parts(self, x, mask, lr, grids, complex_images, noise=None, with_hr_target=False):
        # As _fast, plus the RSS images lr_clean and lr_input (and the HR target); without
        # complex_images the complex LR images are not formed (returned as None).
        H, W = x.shape[-2:]
        dev = x.device
        a = intensity_factor(lr, (H, W))

        # LR: a * G holds the centred LR samples up to the sign pattern S.
        sign_k = checkerboard(lr[0], lr[1], dev, signed=True)  # S
        if complex_images:
            block, stage_blocks, hr_target = self._spectral_blocks(x, lr, grids, None)  # G (unscaled)
            observed_block = block * (mask * a)  # a * G ⊙ mask (scale folded into the small mask)
            if self.noise_std > 0:
                drawn = self._noise(block) if noise is None else noise
                observed_block = observed_block + mask * drawn
            lr_kspace = block * (sign_k * a)
            lr_observed = observed_block * sign_k
            # ifft2 of the unsigned blocks, then the image-side sign M = (-1)^(i+j).
            sign_x = checkerboard(lr[0], lr[1], dev)  # M
            lr_clean_c = torch.fft.ifft2(block, norm="ortho").mul_(sign_x * a)
            lr_input_c = torch.fft.ifft2(observed_block, norm="ortho").mul_(sign_x)
            lr_clean, lr_input = rss(lr_clean_c), rss(lr_input_c)
        else:
            # Only the RSS images are returned: gather, scale and sign the centred LR
            # k-space a * S ⊙ G in one pass. ifft2(S ⊙ Z) is ifft2(Z) rolled by (h/2, w/2)
            # (times a global sign), so the RSS images are rolled back on the small
            # coil-combined grid.
            lr_kspace, stage_blocks, hr_target = self._spectral_blocks(x, lr, grids, sign_k * a)
            lr_observed = lr_kspace * mask
            if self.noise_std > 0:
                drawn = self._noise(lr_kspace) if noise is None else noise
                lr_observed = lr_observed + (mask * drawn) * sign_k
            half = (lr[0] // 2, lr[1] // 2)
            lr_clean = torch.roll(rss(torch.fft.ifft2(lr_kspace, norm="ortho")), half, (-2, -1))
            lr_input = torch.roll(rss(torch.fft.ifft2(lr_observed, norm="ortho")), half, (-2, -1))
            lr_clean_c = lr_input_c = None
        stage_targets = []
        for g, stage_block in zip(grids[1:-1], stage_blocks):  # intermediate outputs (x4: the x2 grid)
            image = torch.fft.ifft2(stage_block, norm="ortho")
            stage_targets.append(rss(image).mul_(intensity_factor(g, (H, W))))
        out = (lr_kspace, lr_clean_c, lr_observed, lr_input_c, stage_targets, lr_clean, lr_input)
        return out + (hr_target,) if with_hr_target else out

    def _general(self, x, mask, lr, grids, noise=None):
        kspace = fft2c(x)
        lr_kspace = crop_kspace(kspace, lr)
        lr_observed = lr_kspace * mask
        if self.noise_std > 0:
            lr_observed = lr_observed + mask * (self._noise(lr_kspace) if noise is None else noise)
        lr_clean_c = ifft2c(lr_kspace)
        lr_input_c = ifft2c(lr_observed)
        stage_targets = [rss(ifft2c(crop_kspace(kspace, g))) for g in grids[1:-1]]
        return lr_kspace, lr_clean_c, lr_observed, lr_input_c, stage_targets
