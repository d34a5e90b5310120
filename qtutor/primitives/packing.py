"""Packing 2-, 3-, 4- and 8-bit codes into bytes or int32 words, and back.

Codes are laid out as a little-endian bit stream along the last axis: code
``j`` occupies bits ``[j*n_bits, (j+1)*n_bits)`` of the stream, and word ``k``
holds stream bits ``[k*W, (k+1)*W)`` with ``W`` = 8 (uint8) or 32 (int32).
For 4-bit codes in int32 this is GPTQ's ``qweight`` order (eight codes per
word, the first in the lowest nibble); 3-bit codes spill across word
boundaries exactly as GPTQ's 3-bit packing does (32 codes in 3 words).
"""
from __future__ import annotations

import torch

__all__ = ["pack", "unpack", "packed_length"]

_WIDTH = {torch.uint8: 8, torch.int32: 32}


def _width(dtype: torch.dtype) -> int:
    if dtype not in _WIDTH:
        raise ValueError(f"dtype={dtype}: pack into torch.uint8 or torch.int32")
    return _WIDTH[dtype]


def _check_bits(n_bits: int) -> None:
    if not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits={n_bits!r}: must be an integer from 1 to 8")


def packed_length(n: int, n_bits: int, dtype: torch.dtype = torch.uint8) -> int:
    """Words needed for ``n`` codes; raises if they do not fill whole words."""
    _check_bits(n_bits)
    w = _width(dtype)
    if (n * n_bits) % w:
        raise ValueError(
            f"{n} codes of {n_bits} bits ({n * n_bits} bits) do not fill whole "
            f"{w}-bit words: the last axis must be a multiple of {w // _gcd(w, n_bits)}"
        )
    return n * n_bits // w


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def pack(q: torch.Tensor, n_bits: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Pack unsigned codes ``q`` (..., n) with values in [0, 2**n_bits) into (..., n*n_bits/W)."""
    if q.is_floating_point():
        raise ValueError(f"q has dtype {q.dtype}: pack integer codes")
    w = _width(dtype)
    packed_length(q.shape[-1], n_bits, dtype)
    qi = q.to(torch.int64)
    if q.numel() and (int(qi.min()) < 0 or int(qi.max()) >= 2**n_bits):
        raise ValueError(
            f"codes span [{int(qi.min())}, {int(qi.max())}]: {n_bits}-bit packing needs "
            f"unsigned codes in [0, {2**n_bits - 1}] (shift signed codes by {2 ** (n_bits - 1)})"
        )
    shifts = torch.arange(n_bits, device=q.device)
    bits = (qi.unsqueeze(-1) >> shifts) & 1  # (..., n, n_bits)
    bits = bits.flatten(-2).unflatten(-1, (-1, w))  # (..., n*n_bits/w, w)
    words = (bits << torch.arange(w, device=q.device)).sum(-1)  # int64, < 2**w
    if dtype is torch.int32:
        words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement wrap
    return words.to(dtype)


def unpack(packed: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (..., m) words -> (..., m*W/n_bits) uint8 codes."""
    _check_bits(n_bits)
    w = _width(packed.dtype)
    if (packed.shape[-1] * w) % n_bits:
        raise ValueError(
            f"{packed.shape[-1]} words of {w} bits do not hold a whole number of {n_bits}-bit codes"
        )
    words = packed.to(torch.int64) & (2**w - 1)
    bits = (words.unsqueeze(-1) >> torch.arange(w, device=packed.device)) & 1  # (..., m, w)
    bits = bits.flatten(-2).unflatten(-1, (-1, n_bits))  # (..., n, n_bits)
    return (bits << torch.arange(n_bits, device=packed.device)).sum(-1).to(torch.uint8)
