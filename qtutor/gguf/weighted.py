"""GGUF quantization with an importance matrix, as ``llama-quantize --imatrix`` does it.

Ports of ``quantize_q4_0`` … ``quantize_q6_K`` of ``ggml/src/ggml-quants.c``
(llama-cpp-python 0.3.36's vendored llama.cpp) when ``quant_weights`` is not NULL:
``quantize_row_q{4,5}_{0,1}_impl`` and ``quantize_row_q{2..6}_K_impl``.  The
importance of input column ``j`` (the mean of ``x_j²`` over calibration tokens,
:mod:`qtutor.gguf.imatrix`) weights the squared error of every weight in that
column, times ``sqrt(sigma2 + w²)`` with ``sigma2`` the mean square of the row
(legacy types, Q2_K) or twice that of the super-block (Q3_K, Q4_K, Q5_K); Q6_K
uses the importance alone.  Q8_0 ignores it.  Every type is byte-identical with
llama.cpp (``tests/gguf/test_weighted.py``).
"""
from __future__ import annotations

import numpy as np

from .kquants import _bytes, _f16, _final_codes, _pack_2bit, pack_scales_k4, unpack_scales_k4
from .legacy import _f16_bytes, _high_bits, _nibbles, quantize_blocks
from .search import F32, GROUP_MAX_EPS, nearest_int, seq_sum, signed_absmax
from .weighted_search import make_qkx3_quants, make_qp_quants, make_qx_quants_weighted

__all__ = ["WEIGHTED_TYPES", "quantize_weighted"]

WEIGHTED_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def _legacy(a: np.ndarray, qw: np.ndarray, name: str) -> np.ndarray:
    rows = a.shape[0]
    sigma2 = seq_sum(a * a) / F32(a.shape[1])  # (rows,): mean square of the whole row
    x = a.reshape(-1, 32)  # (rows * nb, 32)
    s2 = np.repeat(sigma2, a.shape[1] // 32)[:, None]
    weight = (qw * np.sqrt(s2 + x * x)).astype(F32)
    if name in ("Q4_0", "Q5_0"):
        d, L = make_qx_quants_weighted(x, 8 if name == "Q4_0" else 16, weight)
        d = d[:, None]
        parts = [_f16_bytes(d)] + ([_high_bits(L.astype(np.uint8))] if name == "Q5_0" else []) + [_nibbles(L.astype(np.uint8))]
    else:
        d, the_min, L = make_qkx3_quants(x, weight, 15 if name == "Q4_1" else 31)
        parts = [_f16_bytes(d[:, None]), _f16_bytes(-the_min[:, None])]
        parts += ([_high_bits(L.astype(np.uint8))] if name == "Q5_1" else []) + [_nibbles(L.astype(np.uint8))]
    return np.concatenate(parts, axis=1).reshape(rows, -1)


def _sigma2(x: np.ndarray, factor: float) -> np.ndarray:
    return (F32(factor) * seq_sum(x * x)) / F32(256)  # (nb,): C's factor*sum_x2/QK_K


def _q4_q5_K(x: np.ndarray, qw: np.ndarray, nmax: int):
    nb = x.shape[0]
    s2 = np.repeat(_sigma2(x, 2), 8)[:, None]  # (nb * 8, 1)
    rows, qrows = x.reshape(-1, 32), qw.reshape(-1, 32)  # (nb * 8, 32): one row per sub-block
    weights = (qrows * np.sqrt(s2 + rows * rows)).astype(F32)
    sw = seq_sum(weights).reshape(nb, 8)  # (nb * 8,) -> (nb, 8)
    scales, mins, L = make_qkx3_quants(rows, weights, nmax)
    d_block, ls = make_qp_quants(scales.reshape(nb, 8), 63, sw)
    m_block, lm = make_qp_quants(mins.reshape(nb, 8), 63, sw)
    if nmax == 31:  # Q5_K clamps the 6-bit codes, Q4_K does not
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    packed = pack_scales_k4(ls, lm)
    d, dmin = _f16(d_block), _f16(m_block)
    sc, m = unpack_scales_k4(packed)
    d_sub = (d.astype(F32)[:, None] * sc.astype(F32)).reshape(-1)  # (nb, 8) -> (nb * 8,)
    dm_sub = (dmin.astype(F32)[:, None] * m.astype(F32)).reshape(-1)
    L = _final_codes(rows, L, d_sub, dm_sub, 0, nmax, 0).reshape(nb, 4, 2, 32).astype(np.uint8)  # (nb, pair, half, 32)
    return d, dmin, packed, L


def _q4_K(x, qw):
    d, dmin, scales, L = _q4_q5_K(x, qw, 15)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)  # (nb, 4, 32) -> (nb, 128)
    return np.concatenate([_bytes(d), _bytes(dmin), scales, qs], axis=1)


def _q5_K(x, qw):
    d, dmin, scales, L = _q4_q5_K(x, qw, 31)
    high = (L >> 4) & 1
    qh = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for n in range(4):
        qh |= (high[:, n, 0] << (2 * n)) | (high[:, n, 1] << (2 * n + 1))
    qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)  # (nb, 4, 32) -> (nb, 128)
    return np.concatenate([_bytes(d), _bytes(dmin), scales, qh, qs], axis=1)


def _q6_K(x, qw):
    nb = x.shape[0]
    rows = x.reshape(-1, 16)  # (nb * 16, 16): one row per sub-block
    scales, L = make_qx_quants_weighted(rows, 32, qw.reshape(-1, 16))  # the importance alone, no sigma2
    scales = scales.reshape(nb, 16)  # (nb * 16,) -> (nb, 16)
    amax, max_scale = signed_absmax(scales)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore"):
        iscale = (F32(-128) / np.where(zero, F32(1), max_scale)).astype(F32)
    d = _f16(F32(1) / iscale)
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    d_sub = (d.astype(F32)[:, None] * sc.astype(F32)).reshape(-1)  # (nb, 16) -> (nb * 16,)
    # (nb * 16, 16) -> (nb, half, quarter, 32)
    L = _final_codes(rows, L, d_sub, None, -32, 31, 32).reshape(nb, 2, 4, 32).astype(np.uint8)
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)  # (nb, 2, 64)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _bytes(d)], axis=1)
    out[zero] = 0  # an all-zero super-block is stored as zero bytes
    return out


def _q3_K(x, qw):
    nb = x.shape[0]
    s2 = np.repeat(_sigma2(x, 2), 16)[:, None]  # (nb * 16, 1)
    rows, qrows = x.reshape(-1, 16), qw.reshape(-1, 16)  # (nb * 16, 16): one row per sub-block
    weight = (qrows * np.sqrt(s2 + rows * rows)).astype(F32)
    sw = seq_sum(weight).reshape(nb, 16)  # (nb * 16,) -> (nb, 16)
    scales, L = make_qx_quants_weighted(rows, 4, weight)
    d_block, l = make_qx_quants_weighted(scales.reshape(nb, 16), 32, sw)  # 6-bit scale codes, offset 32
    l = l.astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    for j in range(16):
        packed[:, 8 + j % 4] |= (l[:, j] >> 4) << (2 * (j // 4))
    d = _f16(d_block)
    d_sub = (d.astype(F32)[:, None] * (l.astype(np.int32) - 32).astype(F32)).reshape(-1)  # (nb, 16) -> (nb * 16,)
    L = _final_codes(rows, L, d_sub, None, -4, 3, 4).reshape(nb, 256)  # (nb * 16, 16) -> (nb, 256)
    high = (L > 3).astype(np.uint8)
    L = L - 4 * high
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for bit in range(8):
        hmask |= high[:, 32 * bit: 32 * bit + 32] << bit
    return np.concatenate([hmask, _pack_2bit(L), packed, _bytes(d)], axis=1)


def _q2_K(x, qw):
    nb = x.shape[0]
    s2 = np.repeat(_sigma2(x, 1), 16)[:, None]  # (nb * 16, 1): Q2_K's sigma2 has no factor 2
    rows, qrows = x.reshape(-1, 16), qw.reshape(-1, 16)  # (nb * 16, 16)
    weight = (qrows * np.sqrt(s2 + rows * rows)).astype(F32)
    sw = seq_sum(weight).reshape(nb, 16)
    scales, mins, L = make_qkx3_quants(rows, weight, 3)
    dm, ls = make_qp_quants(scales.reshape(nb, 16), 15, sw)
    mm, lm = make_qp_quants(mins.reshape(nb, 16), 15, sw)
    packed = ((ls | (lm << 4)) & 0xFF).astype(np.uint8)
    d, dmin = _f16(dm), _f16(mm)
    d_sub = (d.astype(F32)[:, None] * (packed & 0xF).astype(F32)).reshape(-1)  # (nb, 16) -> (nb * 16,)
    dm_sub = (dmin.astype(F32)[:, None] * (packed >> 4).astype(F32)).reshape(-1)
    L = _final_codes(rows, L, d_sub, dm_sub, 0, 3, 0).reshape(nb, 256)  # (nb * 16, 16) -> (nb, 256)
    return np.concatenate([packed, _pack_2bit(L), _bytes(d), _bytes(dmin)], axis=1)


_KQUANT = {"Q2_K": _q2_K, "Q3_K": _q3_K, "Q4_K": _q4_K, "Q5_K": _q5_K, "Q6_K": _q6_K}


def quantize_weighted(a: np.ndarray, imatrix: np.ndarray, name: str) -> np.ndarray:
    """Rows ``a`` (n_rows, n_per_row) with column importances ``imatrix`` (n_per_row,) -> (n_rows, row bytes) uint8.

    The bytes ``llama-quantize`` writes with ``--imatrix`` (``quantize_<type>(src, dst, nrow,
    n_per_row, imatrix)``).  ``n_per_row`` must be a multiple of 32 (legacy) or 256 (k-quants).
    """
    if name not in WEIGHTED_TYPES:
        raise ValueError(f"type {name!r}: not one of {WEIGHTED_TYPES}")
    a = np.asarray(a, dtype=F32)
    qw = np.asarray(imatrix, dtype=F32)
    if a.ndim != 2 or qw.shape != (a.shape[1],):
        raise ValueError(f"a must be (n_rows, n_per_row) and imatrix (n_per_row,), got {a.shape} and {qw.shape}")
    block = 256 if name in _KQUANT else 32
    if a.shape[1] % block:
        raise ValueError(f"{name}: n_per_row={a.shape[1]} is not a multiple of {block}")
    if not (np.isfinite(a).all() and np.isfinite(qw).all()):
        raise ValueError("a or imatrix contains NaN or Inf (llama-quantize refuses a non-finite imatrix)")
    if name == "Q8_0":  # quantize_q8_0 ignores quant_weights
        return quantize_blocks(a.reshape(-1, 32), name).reshape(a.shape[0], -1)
    # every row meets the same importances: (n_rows, n_per_row) -> (n_rows * n_per_row / block, block)
    qw_rows = np.broadcast_to(qw, a.shape).reshape(-1, block)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name in _KQUANT:
            return _KQUANT[name](a.reshape(-1, 256), qw_rows).reshape(a.shape[0], -1)
        return _legacy(a, qw_rows, name)
