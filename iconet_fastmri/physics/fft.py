"""Centred, orthonormal 2D FFTs on native complex tensors.

Conventions (the single source of truth for the whole package):

* The transforms act on the last two dimensions ``(..., H, W)``.
* "Centred" means the zero frequency sits at index ``(H // 2, W // 2)`` in
  k-space and the image origin at ``(H // 2, W // 2)`` in image space, i.e.
  ``fft2c(x) = fftshift(fft2(ifftshift(x)))`` exactly as in
  :func:`fastmri.fft2c`.
* ``norm="ortho"``: the transforms are unitary, so ``||fft2c(x)|| == ||x||``.
* Inputs are native complex tensors. fastMRI's real view (last dim 2) only
  appears at the boundary, through :func:`to_real_view` / :func:`from_real_view`.
* The transforms always compute in complex64 (or complex128 for double
  input), also under autocast: half-precision cuFFT only accepts power-of-two
  sizes and fastMRI matrices (640x368, 320x320, ...) are not.

Speed: for an even size N, ``ifftshift``/``fftshift`` are both a roll by N/2,
and a roll by N/2 in one domain is a modulation by ``(-1)^n`` in the other.
Hence, for even H and W,

    fft2c(x) = s * M ⊙ fft2(M ⊙ x),   M[i, j] = (-1)^(i + j),
    s = (-1)^(H/2 + W/2),

which replaces the two copying rolls by two multiplications with a cached
sign pattern (the global sign ``s`` is folded into one of them). Equivalently
(modulating the input is rolling the output),

    fft2c(x) = roll(fft2(x), (H/2, W/2)) ⊙ (s * M),

so without autograd a large transform is the unshifted FFT followed by a
single pass that moves the four quadrants of its output into place while
multiplying them by the sign pattern (``torch.mul(..., out=quadrant)``); a
small one (up to ``2**20`` elements, where per-op overhead dominates)
modulates the input and then the FFT output in place (on CUDA up to ``2**23``
elements, where kernel launches dominate longer). The patterns are cached
in the interleaved real layout ``(H, W, 2)`` of :func:`torch.view_as_real`,
so the multiplies need no broadcast over the (real, imag) pair. Large CPU
tensors (over 32 MiB) are transformed in 16 MiB chunks over the leading
dimensions, writing straight into the result: fresh large allocations are
page-faulted in on first touch, which costs about as much as the FFT. When
autograd records the graph (or under ``torch.compile``), the out-of-place
two-modulation form is used. Odd sizes take the exact roll-based general path.
:mod:`iconet_fastmri.physics.degradation` goes further and folds the sign pattern
into the crop and the mask multiply.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Tuple

import torch

__all__ = [
    "fft2c",
    "ifft2c",
    "to_real_view",
    "from_real_view",
    "checkerboard",
    "as_complex",
    "functional_only",
    "chunk_bounds",
    "CHUNK_ABOVE_BYTES",
    "CHUNK_BYTES",
]

_CHECKERBOARD_CACHE: Dict[Tuple[int, int, str, torch.dtype, bool], torch.Tensor] = {}
_INTERLEAVED_CACHE: Dict[Tuple[int, int, str, torch.dtype, bool], torch.Tensor] = {}


def as_complex(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as complex64/complex128 (real input gets a zero imaginary part).

    Half-precision complex (complex32) and real bf16/fp16 are promoted to
    complex64, which is what the FFTs run in.
    """
    if x.is_complex():
        if x.dtype == torch.complex32:
            return x.to(torch.complex64)
        return x
    if x.dtype == torch.float64:
        return x.to(torch.complex128)
    return x.to(torch.float32).to(torch.complex64)


def checkerboard(
    h: int, w: int, device: torch.device, dtype: torch.dtype = torch.float32, signed: bool = False
) -> torch.Tensor:
    """The sign pattern ``(-1)^(i + j)`` of shape ``(h, w)`` (cached per device).

    Args:
        h, w: grid size.
        device: device of the pattern.
        dtype: real dtype of the pattern.
        signed: multiply by the global sign ``(-1)^(h/2 + w/2)`` of the
            centred transform (only meaningful for even ``h`` and ``w``).
    """
    key = (h, w, str(device), dtype, signed)
    pattern = _CHECKERBOARD_CACHE.get(key)
    if pattern is None:
        with torch.inference_mode(False):  # a cached pattern must serve autograd later, whoever made it first
            pattern = _checkerboard(h, w, device, dtype, signed)
        if len(_CHECKERBOARD_CACHE) > 64:
            _CHECKERBOARD_CACHE.clear()
        _CHECKERBOARD_CACHE[key] = pattern
    return pattern


def _checkerboard(h: int, w: int, device: torch.device, dtype: torch.dtype, signed: bool) -> torch.Tensor:
    i = torch.arange(h, device=device).view(h, 1)
    j = torch.arange(w, device=device).view(1, w)
    parity = (i + j) % 2
    if signed and ((h // 2 + w // 2) % 2 == 1):
        parity = 1 - parity
    return (1 - 2 * parity).to(dtype)


def _interleaved(
    h: int, w: int, device: torch.device, dtype: torch.dtype, signed: bool
) -> torch.Tensor:
    # The checkerboard in the real-view layout (h, w, 2): a contiguous operand for the
    # multiply on torch.view_as_real(x) (no stride-0 broadcast over the last dim).
    key = (h, w, str(device), dtype, signed)
    pattern = _INTERLEAVED_CACHE.get(key)
    if pattern is None:
        with torch.inference_mode(False):
            pattern = checkerboard(h, w, device, dtype, signed).unsqueeze(-1).expand(h, w, 2).contiguous()
        if len(_INTERLEAVED_CACHE) > 64:
            _INTERLEAVED_CACHE.clear()
        _INTERLEAVED_CACHE[key] = pattern
    return pattern


def _modulate(x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    # Multiply a complex tensor by a real +-1 pattern (interleaved (h, w, 2) layout)
    # through the real view: one pass over the data, no complex promotion.
    return torch.view_as_complex(torch.view_as_real(x) * pattern)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def functional_only(x: torch.Tensor) -> bool:
    """Whether ``x`` must be transformed out of place (autograd, ``torch.compile`` or functorch).

    ``out=`` writes into views are not differentiable and cannot be traced, so
    the fast in-place paths here and in :mod:`.degradation` check this first.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return True
    if _is_compiling():
        return True
    is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(is_wrapped(x)) if is_wrapped is not None else False


def _quadrants(h: int, w: int):
    # (destination, source) quadrant slices of roll(., (h/2, w/2)) for even h, w.
    h2, w2 = h // 2, w // 2
    top, bottom, left, right = slice(None, h2), slice(h2, None), slice(None, w2), slice(w2, None)
    return (
        ((top, left), (bottom, right)),
        ((bottom, right), (top, left)),
        ((top, right), (bottom, left)),
        ((bottom, left), (top, right)),
    )


def _roll_modulate_into(src: torch.Tensor, signed: torch.Tensor, out: torch.Tensor) -> None:
    # out = roll(src, (h/2, w/2)) * signed, all in the real view (..., h, w, 2).
    h, w = src.shape[-3], src.shape[-2]
    for (dr, dc), (sr, sc) in _quadrants(h, w):
        torch.mul(src[..., sr, sc, :], signed[dr, dc], out=out[..., dr, dc, :])


def _roll_modulate(y: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
    """``roll(y, (H/2, W/2)) * signed`` in one pass: quadrant moves with ``out=`` multiplies."""
    src = torch.view_as_real(y)
    out = torch.empty_like(src)
    _roll_modulate_into(src, signed, out)
    return torch.view_as_complex(out)


def _chunked_centred(x: torch.Tensor, transform, signed: torch.Tensor) -> torch.Tensor:
    """The quadrant path over chunks of the leading dims (large CPU tensors).

    Each chunk's FFT output is a small temporary that the C allocator reuses from
    chunk to chunk, so only the result is a fresh (page-faulting) allocation, as for
    a plain FFT; unchunked, the full-size FFT output and the result both are.
    """
    h, w = x.shape[-2], x.shape[-1]
    flat = x.reshape(-1, h, w)  # a view: x is contiguous here
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out_flat = torch.view_as_real(out).view(-1, h, w, 2)
    per = CHUNK_BYTES // (h * w * x.element_size())
    for start, stop in chunk_bounds(flat.shape[0], per):
        y = transform(flat[start:stop], dim=(-2, -1), norm="ortho")
        _roll_modulate_into(torch.view_as_real(y), signed, out_flat[start:stop])
    return out


def chunk_bounds(total: int, per: int, min_size: int = 2) -> List[Tuple[int, int]]:
    """``[start, stop)`` chunks of ``range(total)``, ``per`` long, none shorter than ``min_size``.

    A short tail is merged into the chunk before it. Chunks never hold a single
    2D slice: CPU FFTs are only ever batched, as in an unchunked call (torch
    2.14's MKL FFT of one 2048x2048 complex64 image on 2 threads is wrong, a
    batch of them is right).
    """
    per = max(per, min_size)
    bounds = [(s, min(s + per, total)) for s in range(0, total, per)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds[-2] = (bounds[-2][0], total)
        bounds.pop()
    return bounds


#: Up to this many complex elements the even-size path modulates the input and
#: then the FFT output in place (fewer, cache-resident ops); above it the single
#: quadrant pass after the FFT moves less memory.
_SMALL_NUMEL = 1 << 20
#: The same bound on CUDA, measured on an H200 (a one-off A/B, ``docs/gpu/h200_run2_gpu_ab.json`` and ``h200_run3_gpu_ab.json``): the in-place
#: modulations (three kernels) beat the quadrant pass (five kernels, four of them
#: strided) up to a 15-coil 640x368 slice (0.126 vs 0.230 ms; floor 0.077) and lose
#: on a batch of 8 of them (0.77 vs 0.66 ms; floor 0.43).
_SMALL_NUMEL_CUDA = 1 << 23
#: CPU tensors larger than this many bytes are transformed in chunks of at most
#: CHUNK_BYTES over the leading dims: glibc serves allocations above its largest
#: mmap threshold (32 MiB) with fresh pages, whose first-touch faults otherwise
#: cost as much as the FFT itself.
CHUNK_ABOVE_BYTES = 32 * 2**20
CHUNK_BYTES = 16 * 2**20


def _autocast_off(device_type: str):
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older torch: no per-device query
        enabled = True
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _centred(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    x = as_complex(x)
    h, w = x.shape[-2], x.shape[-1]
    transform = torch.fft.ifft2 if inverse else torch.fft.fft2
    with _autocast_off(x.device.type):
        if h % 2 == 0 and w % 2 == 0:
            real_dtype = torch.float64 if x.dtype == torch.complex128 else torch.float32
            signed = _interleaved(h, w, x.device, real_dtype, signed=True)
            if functional_only(x):
                plain = _interleaved(h, w, x.device, real_dtype, signed=False)
                y = transform(_modulate(x, plain), dim=(-2, -1), norm="ortho")
                return _modulate(y, signed)
            if x.numel() <= (_SMALL_NUMEL_CUDA if x.device.type == "cuda" else _SMALL_NUMEL):
                plain = _interleaved(h, w, x.device, real_dtype, signed=False)
                y = transform(_modulate(x, plain), dim=(-2, -1), norm="ortho")
                torch.view_as_real(y).mul_(signed)  # y is ours: modulate in place
                return y
            if (
                x.device.type == "cpu"
                and x.numel() * x.element_size() > CHUNK_ABOVE_BYTES
                and x.dim() > 2
                and x.is_contiguous()
                and 2 * h * w * x.element_size() <= CHUNK_BYTES  # >= 2 slices per chunk
            ):
                return _chunked_centred(x, transform, signed)
            y = transform(x, dim=(-2, -1), norm="ortho")
            return _roll_modulate(y, signed)
        # General (odd-size) path: exact shifts, as numpy/fastMRI define them.
        x = torch.fft.ifftshift(x, dim=(-2, -1))
        y = transform(x, dim=(-2, -1), norm="ortho")
        return torch.fft.fftshift(y, dim=(-2, -1))


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two dimensions.

    Args:
        x: complex image(s), shape ``(..., H, W)``. Real input is treated as a
            real-valued image.

    Returns:
        Centred k-space, complex, shape ``(..., H, W)``; equals
        ``fastmri.fft2c`` on the real view to float32 rounding.
    """
    return _centred(x, inverse=False)


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D inverse FFT over the last two dimensions.

    Args:
        x: centred k-space, complex, shape ``(..., H, W)``.

    Returns:
        Complex image(s), shape ``(..., H, W)``; equals ``fastmri.ifft2c``.
    """
    return _centred(x, inverse=True)


def to_real_view(x: torch.Tensor) -> torch.Tensor:
    """Native complex ``(...,)`` -> fastMRI real view ``(..., 2)`` (a copy-free view)."""
    if not x.is_complex():
        raise TypeError(f"to_real_view expects a complex tensor, got dtype {x.dtype}")
    return torch.view_as_real(x)


def from_real_view(x: torch.Tensor) -> torch.Tensor:
    """fastMRI real view ``(..., 2)`` -> native complex ``(...,)``."""
    if x.shape[-1] != 2:
        raise ValueError(
            f"from_real_view expects a last dimension of size 2 (real, imag), got shape {tuple(x.shape)}"
        )
    return torch.view_as_complex(x.contiguous())
