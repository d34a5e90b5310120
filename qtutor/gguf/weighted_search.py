"""llama.cpp's scale searches *with an importance matrix*, vectorized over rows.

Ports of the ``quant_weights != NULL`` paths of ``ggml/src/ggml-quants.c``
(llama-cpp-python 0.3.36's vendored llama.cpp): ``make_qx_quants`` with a weight
per value, ``make_qkx3_quants`` and ``make_qp_quants``.  Like
:mod:`qtutor.gguf.search`, each works on ``x`` of shape (rows, n), one row per
(sub-)block, in float32 and in the C code's order of operations, so that the bytes
are llama.cpp's.
"""
from __future__ import annotations

import numpy as np

from .search import F32, GROUP_MAX_EPS, make_qkx2_quants, nearest_int, seq_sum, signed_absmax

__all__ = ["make_qx_quants_weighted", "make_qkx3_quants", "make_qp_quants"]


def make_qx_quants_weighted(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric search minimising ``sum qw·(x − scale·l)²`` (``make_qx_quants``, ``rmse_type = 1``, ``qw`` given).

    ``x``, ``qw``: (rows, n) float32.  Returns ``scale`` (rows,) and codes (rows, n) in [0, 2·nmax),
    offset by ``nmax``.  Tries ``iscale = -(nmax + 0.1·is)/max`` for is = -9..9 and keeps the
    least-squares scale of the best trial.
    """
    x, w = x.astype(F32), qw.astype(F32)
    amax, mx = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)

    def trial(iscale: np.ndarray):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, seq_sum(w * x * lf), seq_sum(w * lf * lf)

    l, sumlx, suml2 = trial((F32(-nmax) / mx).astype(F32))
    L = l + nmax
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = trial((-(F32(nmax) + F32(0.1) * F32(step)) / mx).astype(F32))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better[:, None], l + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, (sumlx / suml2).astype(F32), scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L)


def make_qkx3_quants(x: np.ndarray, weights: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric search with given weights: ``make_qkx3_quants(n, nmax, x, weights, …, -0.9f, 0.05f, 36, false)``.

    With non-NULL weights, llama.cpp's ``make_qkx3_quants`` does what ``make_qkx2_quants`` does
    (same sums, same 37 trials, same squared-error test; ``max <= min`` equals ``max == min``
    once ``min`` is clamped to ≤ 0), so this is :func:`qtutor.gguf.search.make_qkx2_quants` with
    the arguments every imatrix caller passes.  Returns ``scale``, ``the_min`` (≥ 0) and codes.
    """
    return make_qkx2_quants(x, weights, nmax, -0.9, 0.05, 36, False)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize non-negative sub-block scales (or mins) to [0, nmax] with weights ``qw`` (``make_qp_quants``).

    ``x``, ``qw``: (rows, n) float32 (n = 8 or 16 sub-blocks).  Returns the super-block scale
    (rows,) and codes (rows, n) as llama.cpp stores them in ``uint8_t`` (a negative code wraps).
    Steps: ``iscale = (nmax + 0.1·is)/max`` for is = -4..4 by weighted error, then up to five
    passes that move one code at a time while the least-squares fit improves.
    """
    x, w = x.astype(F32), qw.astype(F32)
    mx = np.maximum(x.max(axis=1), F32(0))
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)

    def mse(scale_, l):
        diff = x - scale_[:, None] * l.astype(F32)
        return seq_sum(w * diff * diff)

    iscale = (F32(nmax) / mx).astype(F32)
    best = mse((F32(1) / iscale).astype(F32), nearest_int(iscale[:, None] * x) & 0xFF)  # stored as uint8_t
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = ((F32(0.1) * F32(step) + F32(nmax)) / mx).astype(F32)
        cur = mse((F32(1) / iscale_is).astype(F32), np.minimum(nmax, nearest_int(iscale_is[:, None] * x)))
        better = cur < best
        best = np.where(better, cur, best)
        iscale = np.where(better, iscale_is, iscale)
    l = np.minimum(nmax, nearest_int(iscale[:, None] * x))
    lf = l.astype(F32)
    sumlx, suml2 = seq_sum(w * x * lf), seq_sum(w * lf * lf)  # the int codes, before the uint8_t store
    L = l & 0xFF
    active = ~zero
    for _ in range(5):
        changed = np.zeros(len(x), dtype=bool)
        for i in range(x.shape[1]):
            xi, wi, li = x[:, i], w[:, i], L[:, i].astype(F32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                new_l = np.minimum(nmax, nearest_int(np.where(ok, xi * sl2 / slx, F32(0))))
            nl = new_l.astype(F32)
            slx2 = slx + wi * xi * nl
            sl22 = sl2 + wi * nl * nl
            take = active & ok & (new_l != L[:, i]) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(take, new_l & 0xFF, L[:, i])
            sumlx = np.where(take, slx2, sumlx)
            suml2 = np.where(take, sl22, suml2)
            changed |= take
        active &= changed
        if not active.any():
            break
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L)
