"""The LR acquisition model, ``y = M · (T · F · x) + n``, batched and device-agnostic.

:func:`reference_forward` is the model as a reader checks it against the
conventions (``docs/PIPELINE.md``, "Degradation conventions"), in the operators of
:mod:`.operators`:

1. ``F``: centred orthonormal FFT of the HR per-coil complex images ``x``
   ``(B, C, H, W)`` (for fastMRI, the 320x320 centre crop).
2. ``T``: intensity-preserving truncation of centred k-space to the LR grid
   ``(H/s, W/s)`` (:class:`~.operators.KSpaceTruncation`: the centred block
   times ``sqrt(hw / HW)``, so a flat region keeps its value).
3. ``M``: the LR-grid sampling mask, then complex Gaussian noise ``n`` on the
   acquired samples, then any further acquisition effects (``steps``), each
   masked again.
4. Images: the LR input is ``F⁻¹ y``, the reconstruction prior's target
   ``F⁻¹ T F x``, each stage's SR target ``F⁻¹ T_k F x`` on its grid; coils
   are combined by root-sum-of-squares (the magnitude for one coil), the rule
   of fastMRI's ``reconstruction_esc`` / ``reconstruction_rss``.

:func:`fast_forward` gives the same result (tested equal to
:func:`reference_forward`) faster, for even grids: with ``G = fft2(x)``
unshifted, the centred LR k-space is ``a · S ⊙ G[low block]`` where ``S`` is
a ±1 sign pattern and ``a = sqrt(hw/HW)``; the LR image is ``a · P ⊙
ifft2(G[low block])`` with ``P = (-1)^(i+j)``. Sign patterns touch only
LR-sized data and vanish under RSS. On the CPU the HR part of a large batch
runs in chunks of about 16 MiB (fresh large allocations are page-faulted in
on first touch, which costs about as much as the FFT), writing into
whole-batch LR buffers. :func:`simulate` picks the path.

Shapes: images ``(B, 1, ·, ·)`` float (RSS over coils); k-space ``(B, C, h, w)`` complex.
The configured object that owns the scale, the mask generator, the noise and
the steps is :class:`~iconet_fastmri.physics.acquisition.Acquisition`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch

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
from .operators import KSpaceTruncation, intensity_factor, lr_shape_for, rss

__all__ = [
    "Degraded",
    "KSPACE_STEPS",
    "register_kspace_step",
    "build_kspace_steps",
    "stage_grids",
    "reference_forward",
    "fast_forward",
    "from_lr_kspace",
    "simulate",
]

#: Registry of acquisition effects on the acquired LR k-space (see ``Acquisition(kspace_steps=...)``);
#: other packages add theirs through the entry-point group ``iconet_fastmri.kspace_steps``.
KSPACE_STEPS = Registry("k-space step", "iconet_fastmri.kspace_steps")

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def register_kspace_step(name: str, factory: Callable[..., Any], overwrite: bool = False) -> None:
    """Register an acquisition effect: ``factory(**options)`` returns ``step(kspace, mask) -> kspace``."""
    KSPACE_STEPS.register(name, factory, overwrite=overwrite)


def build_kspace_steps(specs: Sequence[Mapping[str, Any]]) -> List[Step]:
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


def stage_grids(hr_shape: Sequence[int], scale: int) -> List[Tuple[int, int]]:
    """The grids of ICONet's x2 stages, LR first, HR last: ``[(H/s, W/s), ..., (H, W)]``."""
    H, W = int(hr_shape[-2]), int(hr_shape[-1])
    lr_shape_for((H, W), scale)
    stages = int(round(math.log2(scale)))
    return [(H // 2**k, W // 2**k) for k in range(stages, -1, -1)]


def _apply_steps(lr_observed: torch.Tensor, mask: torch.Tensor, steps: Sequence[Step]) -> torch.Tensor:
    for step in steps:
        lr_observed = step(lr_observed, mask) * mask  # samples that were not acquired stay zero
    return lr_observed


def reference_forward(
    hr_images: torch.Tensor,
    mask: torch.Tensor,
    scale: int,
    noise: Optional[torch.Tensor] = None,
    steps: Sequence[Step] = (),
) -> Degraded:
    """The acquisition model written as its operators (any grid; the reference for :func:`fast_forward`).

    Args:
        hr_images: HR per-coil complex images ``(B, C, H, W)``.
        mask: LR-grid mask ``(B, 1, h, w)``.
        scale: the factor s.
        noise: complex noise ``(B, C, h, w)`` added on the acquired samples, or ``None``.
        steps: further acquisition effects ``step(kspace, mask) -> kspace``.
    """
    x = as_complex(hr_images)
    grids = stage_grids(x.shape[-2:], scale)
    hr, lr = grids[-1], grids[0]
    kspace = fft2c(x)                                            # F x
    lr_kspace = KSpaceTruncation(hr, lr)(kspace)                 # T F x
    stage_targets = [rss(ifft2c(KSpaceTruncation(hr, g)(kspace))) for g in grids[1:-1]] + [rss(x)]
    return from_lr_kspace(lr_kspace, stage_targets, mask, scale, noise, steps)  # M, n, steps and the LR images


def simulate(
    hr_images: torch.Tensor,
    mask: torch.Tensor,
    scale: int,
    noise: Optional[torch.Tensor] = None,
    steps: Sequence[Step] = (),
) -> Degraded:
    """:func:`fast_forward` where every stage grid is even, else :func:`reference_forward` (fp32, no autocast)."""
    x = as_complex(hr_images)
    with torch.autocast(device_type=x.device.type, enabled=False):
        grids = stage_grids(x.shape[-2:], scale)
        if all(g[0] % 2 == 0 and g[1] % 2 == 0 for g in grids):
            return fast_forward(x, mask, scale, noise, steps)
        return reference_forward(x, mask, scale, noise, steps)


def from_lr_kspace(
    lr_kspace: torch.Tensor,
    stage_targets: Sequence[torch.Tensor],
    mask: torch.Tensor,
    scale: int,
    noise: Optional[torch.Tensor] = None,
    steps: Sequence[Step] = (),
) -> Degraded:
    """The acquisition from ``T F x`` on: mask, noise, steps and the LR images; the second half of
    :func:`reference_forward`, which calls it.

    Compact shards store ``T F x`` and the stage targets (:mod:`iconet_fastmri.data.shards`), so
    a batch of them gives :func:`simulate`'s result to float32 rounding (``tests/physics/test_degradation.py``).

    Args:
        lr_kspace: ``(B, C, h, w)`` complex, ``T F x`` of the HR coil images.
        stage_targets: ``(B, 1, ·, ·)`` per stage, intermediate grids first, the HR target last.
    """
    with torch.autocast(device_type=lr_kspace.device.type, enabled=False):
        lr_observed = lr_kspace * mask                           # M T F x
        if noise is not None:
            lr_observed = lr_observed + mask * noise             # + n on the acquired samples
        lr_observed = _apply_steps(lr_observed, mask, steps)
        lr_clean_c, lr_input_c = ifft2c(lr_kspace), ifft2c(lr_observed)
        single = lr_kspace.shape[1] == 1
        return Degraded(
            hr_target=stage_targets[-1], lr_kspace=lr_kspace, lr_clean=rss(lr_clean_c), lr_observed=lr_observed,
            lr_input=rss(lr_input_c), mask=mask, stage_targets=list(stage_targets), scale=scale,
            lr_input_complex=lr_input_c if single else None, lr_clean_complex=lr_clean_c if single else None,
        )


@dataclass
class _LRParts:
    """What the fast path computes, by name (complex images only when asked for)."""

    lr_kspace: torch.Tensor
    lr_observed: torch.Tensor
    lr_clean: torch.Tensor
    lr_input: torch.Tensor
    stage_targets: List[torch.Tensor]  # intermediate grids, then the HR target
    lr_clean_complex: Optional[torch.Tensor] = None
    lr_input_complex: Optional[torch.Tensor] = None


def fast_forward(
    hr_images: torch.Tensor,
    mask: torch.Tensor,
    scale: int,
    noise: Optional[torch.Tensor] = None,
    steps: Sequence[Step] = (),
    complex_images: Optional[bool] = None,
) -> Degraded:
    """:func:`reference_forward` for even grids, with the centring shifts folded away (module docstring).

    ``complex_images`` (default: single-coil only) also forms the complex LR images.
    """
    x = as_complex(hr_images)
    grids = stage_grids(x.shape[-2:], scale)
    single = x.shape[1] == 1
    want_complex = single if complex_images is None else complex_images
    p = _fast_parts(x, mask, grids, want_complex, noise)
    lr_observed, lr_input, lr_input_c = p.lr_observed, p.lr_input, p.lr_input_complex
    if steps:
        lr_observed = _apply_steps(lr_observed, mask, steps)
        lr_input_c = ifft2c(lr_observed)
        lr_input = rss(lr_input_c)
    keep = single or complex_images
    return Degraded(
        hr_target=p.stage_targets[-1], lr_kspace=p.lr_kspace, lr_clean=p.lr_clean, lr_observed=lr_observed,
        lr_input=lr_input, mask=mask, stage_targets=p.stage_targets, scale=scale,
        lr_input_complex=lr_input_c if keep else None, lr_clean_complex=p.lr_clean_complex if keep else None,
    )


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


@dataclass
class _Spectral:
    """The HR part of the fast path, for the whole batch."""

    lr_block: torch.Tensor              # the unshifted spectrum's LR block (times the pattern, if given)
    stage_blocks: List[torch.Tensor]    # the blocks of the intermediate grids
    hr_target: torch.Tensor             # RSS of the HR images


def _spectral_blocks(x, grids, lr_pattern) -> _Spectral:
    """The only part that sees HR data: on the CPU in chunks (:func:`_chunks`) into whole-batch LR buffers."""
    lr = grids[0]
    chunks = _chunks(x)
    if len(chunks) == 1:
        spectrum = torch.fft.fft2(x, norm="ortho")  # unshifted: the FFT floor
        blocks = [_low_block(spectrum, g) for g in grids[1:-1]]
        return _Spectral(_low_block(spectrum, lr, lr_pattern), blocks, rss(x))
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
    return _Spectral(block, blocks, hr_target)


def _fast_parts(x, mask, grids, complex_images: bool, noise=None) -> _LRParts:
    lr, (H, W) = grids[0], grids[-1]
    dev = x.device
    a = intensity_factor(lr, (H, W))
    sign_k = checkerboard(lr[0], lr[1], dev, signed=True)  # S
    lr_clean_c = lr_input_c = None
    if complex_images:
        spec = _spectral_blocks(x, grids, None)  # G (unscaled)
        block = spec.lr_block
        observed_block = block * (mask * a)  # a * G ⊙ mask (scale folded into the small mask)
        if noise is not None:  # signed so that lr_observed gets exactly the reference's noise (S² = 1)
            observed_block = observed_block + mask * noise * sign_k
        lr_kspace = block * (sign_k * a)
        lr_observed = observed_block * sign_k
        # ifft2 of the unsigned blocks, then the image-side sign P = (-1)^(i+j).
        sign_x = checkerboard(lr[0], lr[1], dev)
        lr_clean_c = torch.fft.ifft2(block, norm="ortho").mul_(sign_x * a)
        lr_input_c = torch.fft.ifft2(observed_block, norm="ortho").mul_(sign_x)
        lr_clean, lr_input = rss(lr_clean_c), rss(lr_input_c)
    else:
        # Only the RSS images: gather, scale and sign the centred LR k-space a * S ⊙ G in one
        # pass. ifft2(S ⊙ Z) is ifft2(Z) rolled by (h/2, w/2) (times a global sign), so the RSS
        # images are rolled back on the small coil-combined grid.
        spec = _spectral_blocks(x, grids, sign_k * a)
        lr_kspace = spec.lr_block
        lr_observed = lr_kspace * mask
        if noise is not None:
            lr_observed = lr_observed + mask * noise
        half = (lr[0] // 2, lr[1] // 2)
        lr_clean = torch.roll(rss(torch.fft.ifft2(lr_kspace, norm="ortho")), half, (-2, -1))
        lr_input = torch.roll(rss(torch.fft.ifft2(lr_observed, norm="ortho")), half, (-2, -1))
    stage_targets = []
    for g, stage_block in zip(grids[1:-1], spec.stage_blocks):  # intermediate outputs (x4: the x2 grid)
        image = torch.fft.ifft2(stage_block, norm="ortho")
        stage_targets.append(rss(image).mul_(intensity_factor(g, (H, W))))
    stage_targets.append(spec.hr_target)
    return _LRParts(lr_kspace, lr_observed, lr_clean, lr_input, stage_targets, lr_clean_c, lr_input_c)
