"""One adjointness check for every linear operator: ``<A x, y> == <x, Aᴴ y>``.

``assert_adjoint(forward, adjoint, x, y)`` computes both inner products in
double precision (``torch.vdot``, which conjugates its first argument, so
complex operators are checked against the Hermitian adjoint) and compares them
on the scale Cauchy-Schwarz gives the rounding of such sums,
``max(|A x| |y|, |x| |Aᴴ y|)``. Inputs are the caller's, or random
(seeded, complex128 by default) draws from ``x_shape`` / ``y_shape``; without
``y`` or ``y_shape``, ``y`` is drawn with the shape of ``A x``.

Its failure message names both inner products; ``tests/test_adjoint_helper.py``
shows that it fails for wrong adjoints.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch

__all__ = ["assert_adjoint", "random_like_shape"]


def random_like_shape(
    shape: Sequence[int], dtype: torch.dtype = torch.complex128, seed: int = 0
) -> torch.Tensor:
    """A seeded standard-normal tensor (complex: independent real and imaginary parts)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g)


def _double(t: torch.Tensor) -> torch.Tensor:
    if t.is_complex():
        return t.detach().to(torch.complex128)
    return t.detach().to(torch.float64)


def _inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    a, b = _double(a), _double(b)
    if a.is_complex() != b.is_complex():
        a, b = a.to(torch.complex128), b.to(torch.complex128)
    return complex(torch.vdot(a.flatten(), b.flatten()))


def assert_adjoint(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    x: Optional[torch.Tensor] = None,
    y: Optional[torch.Tensor] = None,
    *,
    x_shape: Optional[Sequence[int]] = None,
    y_shape: Optional[Sequence[int]] = None,
    dtype: torch.dtype = torch.complex128,
    seed: int = 0,
    rtol: float = 1e-10,
    atol: float = 0.0,
) -> Tuple[complex, complex]:
    """Assert ``<forward(x), y> == <x, adjoint(y)>`` and return the two inner products.

    Args:
        forward: ``A``, a linear map.
        adjoint: the claimed ``Aᴴ``.
        x: a point of the domain of ``A``; else drawn from ``x_shape`` (``dtype``, ``seed``).
        y: a point of the range of ``A``; else drawn from ``y_shape``, or from the shape
            of ``forward(x)`` (``dtype``, ``seed + 1``).
        rtol: tolerance relative to ``max(|A x| |y|, |x| |Aᴴ y|)`` (``1e-10`` suits
            complex128; float32 operators need about ``1e-6``).
        atol: absolute tolerance added to that.

    Raises:
        AssertionError: the inner products differ by more than the tolerance, the
            shapes do not match (``Aᴴ y`` must have the shape of ``x``), or the check
            is void (``A x`` and ``Aᴴ y`` are both zero).
    """
    if x is None:
        if x_shape is None:
            raise TypeError("assert_adjoint needs x or x_shape")
        x = random_like_shape(x_shape, dtype, seed)
    ax = forward(x)
    if y is None:
        y = random_like_shape(ax.shape if y_shape is None else y_shape, dtype, seed + 1)
    assert tuple(ax.shape) == tuple(y.shape), (
        f"A x has shape {tuple(ax.shape)} but y has shape {tuple(y.shape)}"
    )
    aty = adjoint(y)
    assert tuple(aty.shape) == tuple(x.shape), (
        f"Aᴴ y has shape {tuple(aty.shape)} but x has shape {tuple(x.shape)}"
    )
    lhs, rhs = _inner(ax, y), _inner(x, aty)
    norm = lambda t: float(_double(t).norm())  # noqa: E731
    scale = max(norm(ax) * norm(y), norm(x) * norm(aty))
    assert scale > 0.0, "void adjointness check: A x and Aᴴ y are both zero"
    diff = abs(lhs - rhs)
    tol = atol + rtol * scale
    assert diff <= tol, (
        f"not adjoint: <A x, y> = {lhs:.10g} but <x, Aᴴ y> = {rhs:.10g}; "
        f"|difference| = {diff:.3g} > tolerance {tol:.3g} "
        f"(atol {atol:g} + rtol {rtol:g} * max(|A x| |y|, |x| |Aᴴ y|) = {scale:.6g})"
    )
    return lhs, rhs
