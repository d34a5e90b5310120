"""GGUF's block formats of 32 weights: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each follows llama.cpp's reference quantizer (``ggml-quants.c``:
``quantize_row_q4_0_ref`` and friends) operation by operation in float32, so
the bytes are the ones llama.cpp writes.  Block layouts (little-endian)::

    Q8_0  d:f16                 qs:int8[32]          8.5 bits/weight   x = d·q
    Q4_0  d:f16                 qs:u8[16]            4.5               x = d·(q − 8)
    Q4_1  d:f16 m:f16           qs:u8[16]            5.0               x = d·q + m
    Q5_0  d:f16        qh:u32   qs:u8[16]            5.5               x = d·(q − 16)
    Q5_1  d:f16 m:f16  qh:u32   qs:u8[16]            6.0               x = d·q + m

4-bit codes: byte ``j`` holds code ``j`` in its low nibble and code ``j + 16``
in its high nibble.  The fifth bit of Q5 code ``j`` is bit ``j`` of ``qh``.
The "symmetric" types map the block's signed extreme to −8 (−16), not ±max|x|,
which gains half a step on one side.
"""
from __future__ import annotations

import numpy as np

__all__ = ["QK", "LEGACY_TYPES", "quantize_blocks", "dequantize_blocks", "type_size"]

QK = 32
LEGACY_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
_TYPE_SIZE = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}


def type_size(name: str) -> int:
    """Bytes per block of 32 weights."""
    return _TYPE_SIZE[name]


def _inv(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8)  # round-to-nearest-even, as GGML_FP32_TO_FP16


def _signed_extreme(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude, with its sign (the first one on ties), shape (n, 1).

    llama.cpp starts its running extreme at +0.0 and replaces it only on a strictly larger
    magnitude, so a block of zeros (−0.0 included) has extreme +0.0 and scale 0.0 / −8 = −0.0;
    adding +0.0 turns a −0.0 extreme into +0.0 and leaves every other value as it is.
    """
    return np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1) + np.float32(0.0)


def _nibbles(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)  # (n, 16) uint8


def _high_bits(q: np.ndarray) -> np.ndarray:
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")  # (n, 4) = u32 little-endian


def quantize_blocks(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` (n_blocks, 32) float -> (n_blocks, type_size) uint8 blocks."""
    if name not in LEGACY_TYPES:
        raise ValueError(f"type {name!r}: not one of {LEGACY_TYPES}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != QK:
        raise ValueError(f"x must have shape (n_blocks, 32), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf: a block scale computed from it would be NaN/Inf")
    if name == "Q8_0":
        d = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
        v = x * _inv(d)
        q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf: half away from 0
        return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)
    if name in ("Q4_0", "Q5_0"):
        levels = 8 if name == "Q4_0" else 16
        d = (_signed_extreme(x) / np.float32(-levels)).astype(np.float32)
        # (int8_t)(x*id + 8.5f): truncation toward zero of a positive value, then MIN(15, ·)
        q = np.minimum(np.trunc(x * _inv(d) + np.float32(levels + 0.5)), 2 * levels - 1).astype(np.uint8)
        parts = [_f16_bytes(d)] + ([_high_bits(q)] if name == "Q5_0" else []) + [_nibbles(q)]
        return np.concatenate(parts, axis=1)
    levels = 15 if name == "Q4_1" else 31
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = ((hi - lo) / np.float32(levels)).astype(np.float32)
    q = np.minimum(np.trunc((x - lo) * _inv(d) + np.float32(0.5)), levels).astype(np.uint8)
    parts = [_f16_bytes(d), _f16_bytes(lo)] + ([_high_bits(q)] if name == "Q5_1" else []) + [_nibbles(q)]
    return np.concatenate(parts, axis=1)


def dequantize_blocks(blocks: np.ndarray, name: str) -> np.ndarray:
    """(n_blocks, type_size) uint8 -> (n_blocks, 32) float32, as ``dequantize_row_*``."""
    if name not in LEGACY_TYPES:
        raise ValueError(f"type {name!r}: not one of {LEGACY_TYPES}")
    blocks = np.asarray(blocks, dtype=np.uint8)
    if blocks.ndim != 2 or blocks.shape[1] != _TYPE_SIZE[name]:
        raise ValueError(f"{name} blocks must have shape (n, {_TYPE_SIZE[name]}), got {blocks.shape}")
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    if name == "Q8_0":
        return d * blocks[:, 2:].view(np.int8).astype(np.float32)
    has_min = name in ("Q4_1", "Q5_1")
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32) if has_min else None
    start = 4 if has_min else 2
    five = name.startswith("Q5")
    qs = blocks[:, start + (4 if five else 0):]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)  # (n, 32)
    if five:
        qh = np.unpackbits(blocks[:, start:start + 4], axis=1, bitorder="little").astype(np.int32)  # (n, 32)
        q |= qh << 4
    if has_min:
        return d * q.astype(np.float32) + m
    return d * (q - (16 if five else 8)).astype(np.float32)
