"""GGUF k-quants: super-blocks of 256 weights with quantized sub-block scales.

Ports of llama.cpp's reference quantizers (``quantize_row_q{2..6}_K_ref`` in
``ggml-quants.c``, used by ``llama-quantize`` without an importance matrix) and
of the matching ``dequantize_row_*``.  "Scales of scales": each super-block
stores one fp16 ``d`` (and ``dmin``), and each sub-block a small integer scale
(and min) that multiplies it.

==== =========== ========================================================= ======
type sub-blocks  bytes per 256 weights                                     bits
==== =========== ========================================================= ======
Q2_K 16 × 16     scales[16] (4+4 bit) qs[64] d dmin                        2.625
Q3_K 16 × 16     hmask[32] qs[64] scales[12] (6 bit) d                     3.4375
Q4_K 8 × 32      d dmin scales[12] (6+6 bit) qs[128]                       4.5
Q5_K 8 × 32      d dmin scales[12] qh[32] qs[128]                          5.5
Q6_K 16 × 16     ql[128] qh[64] scales[16] (int8) d                        6.5625
==== =========== ========================================================= ======
"""
from __future__ import annotations

import numpy as np

from .search import F32, make_q3_quants, make_qkx2_quants, make_qx_quants, nearest_int, seq_sum, signed_absmax

__all__ = ["QK_K", "KQUANT_TYPES", "kquant_type_size", "quantize_kquant", "dequantize_kquant",
           "pack_scales_k4", "unpack_scales_k4"]

QK_K = 256
KQUANT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_SIZE = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def kquant_type_size(name: str) -> int:
    """Bytes per super-block of 256 weights."""
    return _SIZE[name]


def _f16(v: np.ndarray) -> np.ndarray:
    return v.astype(F32).astype(np.float16)


def _bytes(h: np.ndarray) -> np.ndarray:
    return h.astype(np.float16).view(np.uint8).reshape(len(h), 2)  # (n,) fp16 -> (n, 2) bytes


def _half(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16)[:, 0].astype(F32)


# --- the 12-byte 6-bit scale packing of Q4_K/Q5_K -------------------------------------

def pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins (nb, 8) -> (nb, 12) bytes.

    Bytes 0-3: scale j (low 6 bits) | top 2 bits of scale j+4;  bytes 4-7: min j | top 2 bits
    of min j+4;  bytes 8-11: low 4 bits of scale j+4 | low 4 bits of min j+4 << 4.
    """
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    q = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    q[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    q[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    q[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return q


def unpack_scales_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_scales_k4` (llama.cpp's ``get_scale_min_k4`` for j = 0..7)."""
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) codes < 4 -> (nb, 64): byte j/4+l of half j holds L[j+l], L[j+l+32]<<2, ..."""
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)  # (nb, half, shift j, 32)
    # (nb, 2, 32) -> (nb, 64)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    # (nb, 64) -> (nb, half, 1, 32), shifted by 2j to (nb, half, j, 32)
    q = qs.reshape(-1, 2, 1, 32) >> (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None]
    return (q & 3).reshape(-1, 256)  # (nb, 2, 4, 32) -> (nb, 256)


# --- encoders ---------------------------------------------------------------------------

def _final_codes(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int, off: int):
    """Re-round each sub-block with its quantized scale (rows where d == 0 keep the search's codes)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (x + dm[:, None]) / d[:, None] if dm is not None else x / d[:, None]
    new = np.clip(nearest_int(np.where(d[:, None] != 0, v, F32(0))), lo, hi) + off
    return np.where(d[:, None] != 0, new, L)


def _quantize_q4_q5(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    nb = x.shape[0]
    rows = x.reshape(-1, 32)  # (nb * 8, 32): one row per sub-block
    av = np.sqrt(seq_sum(rows * rows) / F32(32)).astype(F32)
    weights = av[:, None] + np.abs(rows)
    scales, mins, L = make_qkx2_quants(rows, weights, nmax, rmin, 0.1, 20 if nmax == 15 else 15, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)  # (nb * 8,) -> (nb, 8) each
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)  # (uint8_t) cast, then MIN(63, ·)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
    packed = pack_scales_k4(ls, lm)
    d, dmin = _f16(max_scale / F32(63)), _f16(max_min / F32(63))
    sc, m = unpack_scales_k4(packed)
    d_sub = (d.astype(F32)[:, None] * sc.astype(F32)).reshape(-1)  # (nb, n_sub) -> (nb * n_sub,)
    dm_sub = (dmin.astype(F32)[:, None] * m.astype(F32)).reshape(-1)  # (nb, 8) -> (nb * 8,)
    L = _final_codes(rows, L, d_sub, dm_sub, 0, nmax, 0).reshape(nb, 256)  # (nb * 8, 32) -> (nb, 256)
    return d, dmin, packed, L


def _quantize_q4_K(x):
    d, dmin, scales, L = _quantize_q4_q5(x, 15, -1.0, 20)
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)  # (nb, pair n, half, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)  # (nb, 4, 32) -> (nb, 128)
    return np.concatenate([_bytes(d), _bytes(dmin), scales, qs], axis=1)


def _quantize_q5_K(x):
    d, dmin, scales, L = _quantize_q4_q5(x, 31, -0.5, 15)
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)  # (nb, pair n, half, 32)
    high = (L >> 4) & 1
    qh = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for n in range(4):
        qh |= (high[:, n, 0] << (2 * n)) | (high[:, n, 1] << (2 * n + 1))
    qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)  # (nb, 4, 32) -> (nb, 128)
    return np.concatenate([_bytes(d), _bytes(dmin), scales, qh, qs], axis=1)


def _quantize_q6_K(x):
    nb = x.shape[0]
    rows = x.reshape(-1, 16)  # (nb * 16, 16): one row per sub-block
    scales, L = make_qx_quants(rows, 32)
    scales = scales.reshape(nb, 16)  # (nb * 16,) -> (nb, 16)
    _, max_scale = signed_absmax(scales)  # the sub-block scale of largest magnitude, with its sign
    zero = np.abs(max_scale) < F32(1e-15)
    with np.errstate(divide="ignore"):
        iscale = (F32(-128) / np.where(zero, F32(1), max_scale)).astype(F32)
    d = _f16(F32(1) / iscale)
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    d_sub = (d.astype(F32)[:, None] * sc.astype(F32)).reshape(-1)  # (nb, n_sub) -> (nb * n_sub,)
    # (nb * 16, 16) -> (nb, half, quarter, 32)
    L = _final_codes(rows, L, d_sub, None, -32, 31, 32).reshape(nb, 2, 4, 32).astype(np.uint8)
    # (nb, 2, 64) -> (nb, 128) low nibbles
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    # (nb, 2, 32) -> (nb, 64) high 2 bits
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _bytes(d)], axis=1)
    out[zero] = 0  # an all-zero super-block is stored as zero bytes
    return out


def _quantize_q3_K(x):
    nb = x.shape[0]
    rows = x.reshape(-1, 16)  # (nb * 16, 16): one row per sub-block
    scales, L = make_q3_quants(rows, 4)
    scales = scales.reshape(nb, 16)  # (nb * 16,) -> (nb, 16)
    _, max_scale = signed_absmax(scales)
    has = max_scale != 0
    with np.errstate(divide="ignore"):
        iscale = np.where(has, F32(-32) / np.where(has, max_scale, F32(1)), F32(0)).astype(F32)
    l = np.clip(nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32), -32, 31) + 32  # (nb, 16)
    l = np.where(has[:, None], l, 0).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    for j in range(16):
        packed[:, 8 + j % 4] |= (l[:, j] >> 4) << (2 * (j // 4))
    with np.errstate(divide="ignore"):
        d = _f16(np.where(has, F32(1) / np.where(has, iscale, F32(1)), F32(0)))
    sc = (l.astype(np.int32) - 32) * has[:, None]  # the decoded 6-bit scales, as llama.cpp re-reads them
    d_sub = (d.astype(F32)[:, None] * sc.astype(F32)).reshape(-1)  # (nb, n_sub) -> (nb * n_sub,)
    L = _final_codes(rows, L, d_sub, None, -4, 3, 4).reshape(nb, 256)  # (nb * 16, 16) -> (nb, 256)
    high = (L > 3).astype(np.uint8)
    L = L - 4 * high
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for bit in range(8):
        hmask |= high[:, 32 * bit: 32 * bit + 32] << bit
    return np.concatenate([hmask, _pack_2bit(L), packed, _bytes(d)], axis=1)


def _quantize_q2_K(x):
    nb = x.shape[0]
    rows = x.reshape(-1, 16)  # (nb * 16, 16): one row per sub-block
    scales, mins, L = make_qkx2_quants(rows, np.abs(rows), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        ls = np.where(max_scale[:, None] > 0, nearest_int((F32(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, nearest_int((F32(15) / max_min)[:, None] * mins), 0)
    packed = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
    d = _f16(np.where(max_scale > 0, max_scale / F32(15), F32(0)))
    dmin = _f16(np.where(max_min > 0, max_min / F32(15), F32(0)))
    d_sub = (d.astype(F32)[:, None] * (packed & 0xF).astype(F32)).reshape(-1)  # (nb, 16) -> (nb * 16,)
    dm_sub = (dmin.astype(F32)[:, None] * (packed >> 4).astype(F32)).reshape(-1)  # (nb, 16) -> (nb * 16,)
    L = _final_codes(rows, L, d_sub, dm_sub, 0, 3, 0).reshape(nb, 256)  # (nb * 16, 16) -> (nb, 256)
    return np.concatenate([packed, _pack_2bit(L), _bytes(d), _bytes(dmin)], axis=1)


_ENCODERS = {"Q2_K": _quantize_q2_K, "Q3_K": _quantize_q3_K, "Q4_K": _quantize_q4_K,
             "Q5_K": _quantize_q5_K, "Q6_K": _quantize_q6_K}


def quantize_kquant(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` (n_superblocks, 256) float -> (n_superblocks, type size) uint8, as llama.cpp writes them."""
    if name not in KQUANT_TYPES:
        raise ValueError(f"type {name!r}: not one of {KQUANT_TYPES}")
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2 or x.shape[1] != QK_K:
        raise ValueError(f"x must have shape (n_superblocks, 256), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf: llama.cpp's quantizers would write garbage blocks")
    # all-zero and constant sub-blocks divide by zero in lanes whose results are then discarded
    with np.errstate(divide="ignore", invalid="ignore"):
        return _ENCODERS[name](x)


# --- decoders ---------------------------------------------------------------------------

def dequantize_kquant(blocks: np.ndarray, name: str) -> np.ndarray:
    """(n, type size) uint8 -> (n, 256) float32, as llama.cpp's ``dequantize_row_*``."""
    if name not in KQUANT_TYPES:
        raise ValueError(f"type {name!r}: not one of {KQUANT_TYPES}")
    b = np.asarray(blocks, dtype=np.uint8)
    if b.ndim != 2 or b.shape[1] != _SIZE[name]:
        raise ValueError(f"{name} blocks must have shape (n, {_SIZE[name]}), got {b.shape}")
    nb = b.shape[0]
    if name in ("Q4_K", "Q5_K"):
        d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
        sc, m = unpack_scales_k4(b[:, 4:16])
        qs = b[:, -128:].reshape(nb, 4, 32)  # (nb, 128) -> (nb, pair n, 32)
        q = np.stack([qs & 0xF, qs >> 4], axis=2).astype(np.int32)  # (nb, 4, 2, 32)
        if name == "Q5_K":
            qh = b[:, 16:48]
            for n in range(4):
                q[:, n, 0] += ((qh >> (2 * n)) & 1).astype(np.int32) * 16
                q[:, n, 1] += ((qh >> (2 * n + 1)) & 1).astype(np.int32) * 16
        q = q.reshape(nb, 8, 32).astype(F32)  # (nb, 4, 2, 32) -> (nb, sub-block, 32)
        # (nb, 8, 32) -> (nb, 256)
        return ((d[:, None] * sc)[:, :, None].astype(F32) * q - (dmin[:, None] * m)[:, :, None].astype(F32)).reshape(nb, 256)
    if name == "Q6_K":
        ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), _half(b[:, 208:210])
        ql, qh = ql.reshape(nb, 2, 64), qh.reshape(nb, 2, 32)  # (nb, half, 64), (nb, half, 32)
        q = np.stack([(ql[:, :, :32] & 0xF) | (((qh >> 0) & 3) << 4), (ql[:, :, 32:] & 0xF) | (((qh >> 2) & 3) << 4),
                      (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4), (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)],
                     axis=2).astype(np.int32) - 32  # (nb, 2, 4, 32)
        q = q.reshape(nb, 16, 16).astype(F32)  # (nb, 2, 4, 32) -> (nb, sub-block, 16)
        return ((d[:, None] * sc.astype(F32))[:, :, None] * q).reshape(nb, 256)  # (nb, 16, 16) -> (nb, 256)
    if name == "Q3_K":
        hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _half(b[:, 108:110])
        low = np.concatenate([packed[:, :8] & 0xF, packed[:, :8] >> 4], axis=1).astype(np.int32)
        high = np.stack([(packed[:, 8 + j % 4] >> (2 * (j // 4))) & 3 for j in range(16)], axis=1).astype(np.int32)
        sc = (low | (high << 4)) - 32
        q = _unpack_2bit(qs).astype(np.int32)
        hbit = np.concatenate([(hmask >> bit) & 1 for bit in range(8)], axis=1).astype(np.int32)
        q = (q - 4 * (1 - hbit)).reshape(nb, 16, 16).astype(F32)  # (nb, 256) -> (nb, sub-block, 16)
        return ((d[:, None] * sc.astype(F32))[:, :, None] * q).reshape(nb, 256)  # (nb, 16, 16) -> (nb, 256)
    # Q2_K
    packed, qs, d, dmin = b[:, :16], b[:, 16:80], _half(b[:, 80:82]), _half(b[:, 82:84])
    q = _unpack_2bit(qs).reshape(nb, 16, 16).astype(F32)  # (nb, 256) -> (nb, sub-block, 16)
    dl = (d[:, None] * (packed & 0xF).astype(F32))[:, :, None]
    ml = (dmin[:, None] * (packed >> 4).astype(F32))[:, :, None]
    return (dl * q - ml).reshape(nb, 256)  # (nb, 16, 16) -> (nb, 256)
