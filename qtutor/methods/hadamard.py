"""Hadamard matrices of the orders a Llama-family model needs, and applying them fast.

A Hadamard matrix ``H`` of order ``n`` has entries ±1 and ``H Hᵀ = n I``; ``H / √n``
is orthogonal. QuaRot (Ashkboos et al., 2024) and QuIP# use it as a rotation that
spreads an outlier channel over every channel ("incoherence processing").

Orders: Sylvester's construction gives every power of two; Paley's first
construction gives ``q + 1`` for a prime ``q ≡ 3 (mod 4)`` (12, 20, 24, 44, 48, …);
the Kronecker product of two Hadamard matrices is Hadamard. SmolLM2's widths are
covered: 576 = 72 · 8 (Paley 72, Sylvester 8) and 1536 = 12 · 128. QuaRot's
reference (``hadamard_utils.py``) ships hard-coded matrices of orders 12, 20, 28,
36, 40, … times a power of two; here they are built, and any order the three rules
reach is accepted.

Applying ``x ↦ x H`` for ``H = A ⊗ B`` needs no dense ``n × n`` product: with ``x``
reshaped to ``X`` (a, b) row-major, ``x (A ⊗ B) = vec(Aᵀ X B)``, which costs
``n (a + b)`` multiply-adds instead of ``n²``. :func:`apply_hadamard` does this over
every factor.
"""
from __future__ import annotations

import functools
import math

import torch

__all__ = ["hadamard_factors", "hadamard_matrix", "apply_hadamard", "is_hadamard_order", "random_signs"]


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)  # [[H, H], [H, -H]]
    return h


def _paley1(n: int) -> torch.Tensor:
    """Paley I: order ``n = q + 1``, ``q`` prime, ``q ≡ 3 (mod 4)``."""
    q = n - 1
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q  # (q, q): j - i mod q
    Q = chi[idx]  # Jacobsthal matrix, antisymmetric for q ≡ 3 mod 4
    S = torch.zeros(n, n, dtype=torch.float64)
    S[0, 1:] = 1.0
    S[1:, 0] = -1.0
    S[1:, 1:] = Q
    return S + torch.eye(n, dtype=torch.float64)


@functools.lru_cache(maxsize=None)
def _factor_orders(n: int) -> tuple[int, ...] | None:
    """Orders whose Kronecker product is ``n``, each a power of two or a Paley-I order; None if none found."""
    if n >= 1 and n & (n - 1) == 0:
        return (n,) if n <= 128 else (128,) + _factor_orders(n // 128)  # H_2ᵏ = H_128 ⊗ H_2ᵏ⁻⁷: cheaper to apply
    if n % 4 == 0 and _is_prime(n - 1) and (n - 1) % 4 == 3:
        return (n,)
    if n % 4:
        return None  # a Hadamard order above 2 is a multiple of 4
    two = n & -n  # the largest power of two dividing n
    while two >= 1:  # prefer one Paley factor beside the largest Sylvester factor: the cheapest to apply
        rest = n // two
        if rest % 4 == 0 and _is_prime(rest - 1) and (rest - 1) % 4 == 3:
            return (rest,) + (_factor_orders(two) if two > 1 else ())
        two //= 2
    for d in range(4, n // 4 + 1, 4):  # otherwise a product of several Paley orders
        if n % d == 0:
            left, right = _factor_orders(d), _factor_orders(n // d)
            if left is not None and right is not None and len(left) == 1:
                return left + right
    return None


def is_hadamard_order(n: int) -> bool:
    """Whether :func:`hadamard_matrix` can build order ``n``."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and _factor_orders(n) is not None


@functools.lru_cache(maxsize=None)
def _factor(n: int) -> torch.Tensor:
    h = _sylvester(n) if n & (n - 1) == 0 else _paley1(n)
    return h / math.sqrt(n)


def hadamard_factors(n: int) -> list[torch.Tensor]:
    """Orthonormal float64 factors ``[F₁, F₂, …]`` with ``H_n / √n = F₁ ⊗ F₂ ⊗ …``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r}: must be a positive integer")
    orders = _factor_orders(n)
    if orders is None:
        raise ValueError(
            f"n={n}: no Hadamard matrix of this order can be built here (orders: 1, 2, multiples of 4 that are "
            "products of powers of two and q + 1 for primes q ≡ 3 mod 4, e.g. 12, 20, 48, 576, 1536); "
            "use a random orthogonal rotation instead"
        )
    return [_factor(o).clone() for o in orders]


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal ``(n, n)`` matrix ``H_n / √n`` (``H Hᵀ = I``), dense."""
    h = torch.ones(1, 1, dtype=torch.float64)
    for f in hadamard_factors(n):
        h = torch.kron(h, f)
    return h.to(dtype)


def apply_hadamard(x: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """``x (..., n) @ (F₁ ⊗ F₂ ⊗ …)`` without forming the dense matrix; same dtype as ``x``.

    Each factor is contracted with its own axis of ``x`` reshaped to ``(..., n₁, n₂, …)``
    (row-major, matching ``torch.kron``'s index order).
    """
    orders = [f.shape[0] for f in factors]
    n = math.prod(orders)
    if x.shape[-1] != n:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension, the rotation is of order {n}")
    lead = x.shape[:-1]
    y = x.reshape(-1, *orders)  # (rows, n₁, n₂, …)
    for axis, f in enumerate(factors, start=1):
        y = torch.movedim(torch.movedim(y, axis, -1) @ f.to(device=x.device, dtype=x.dtype), -1, axis)  # contract axis with F
    return y.reshape(*lead, n)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """``n`` float64 values ±1 from a seeded generator: ``diag(s) H`` is a randomized Hadamard rotation."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
