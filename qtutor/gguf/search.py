"""llama.cpp's scale searches for the k-quants, vectorized over sub-blocks.

Ports of ``make_qx_quants``, ``make_q3_quants`` and ``make_qkx2_quants`` from
``ggml-quants.c`` (the reference quantizers used without an importance matrix).
Each works on ``x`` of shape (rows, n) — one row per sub-block — in float32, and
keeps the C code's order of operations: sums accumulate element by element
(:func:`seq_sum`, not numpy's pairwise sum), products are evaluated left to
right, and ``nearest_int`` rounds half to even, like llama.cpp's magic-number
trick.  That is what makes the bytes equal.
"""
from __future__ import annotations

import numpy as np

__all__ = ["F32", "nearest_int", "seq_sum", "signed_absmax", "make_qx_quants", "make_q3_quants", "make_qkx2_quants"]

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest integer, ties to even (llama.cpp's ``nearest_int``)."""
    return np.rint(v.astype(F32)).astype(np.int32)


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """Float32 sum over the last axis, one element after another, as a C loop does."""
    s = terms[..., 0].astype(F32)
    for i in range(1, terms.shape[-1]):
        s = s + terms[..., i]
    return s


def signed_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``max|x|`` and the signed value reaching it first (C: ``if (ax > amax)``), per row."""
    idx = np.abs(x).argmax(axis=1)
    mx = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
    return np.abs(mx), mx


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric search with weights x² (``rmse_type = 1``, no importance): codes in [0, 2·nmax).

    Returns ``scale`` (rows,) and codes ``L`` (rows, n) offset by ``nmax``.
    """
    x = x.astype(F32)
    amax, mx = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    w = x * x

    def trial(iscale: np.ndarray):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, seq_sum(w * x * lf), seq_sum(w * lf * lf)

    iscale = (F32(-nmax) / mx).astype(F32)
    l, sumlx, suml2 = trial(iscale)
    L = l + nmax
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = (-(F32(nmax) + F32(0.1) * F32(step)) / mx).astype(F32)
        l, sumlx, suml2 = trial(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better[:, None], l + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(F32)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L)


def make_q3_quants(x: np.ndarray, nmax: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Q3_K's search: start at ``-nmax / max``, then up to 5 passes of one-code-at-a-time refinement."""
    x = x.astype(F32)
    rows, n = x.shape
    amax, mx = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    iscale = (F32(-nmax) / mx).astype(F32)
    L = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
    w = x * x
    sumlx = seq_sum(w * x * L.astype(F32))
    suml2 = seq_sum(w * L.astype(F32) * L.astype(F32))
    active = np.ones(rows, dtype=bool)
    for _ in range(5):
        changed = np.zeros(rows, dtype=bool)
        for i in range(n):
            xi, wi, li = x[:, i], w[:, i], L[:, i].astype(F32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            with np.errstate(divide="ignore", invalid="ignore"):
                new_l = np.clip(nearest_int(np.where(slx > 0, xi * sl2 / slx, F32(0))), -nmax, nmax - 1)
            nl = new_l.astype(F32)
            slx2 = slx + wi * xi * nl
            sl22 = sl2 + wi * nl * nl
            take = active & (slx > 0) & (new_l != L[:, i]) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(take, new_l, L[:, i])
            sumlx = np.where(take, slx2, sumlx)
            suml2 = np.where(take, sl22, suml2)
            changed |= take
        active &= changed
        if not active.any():
            break
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L + nmax)


def make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric search (scale and min) of Q2_K/Q4_K/Q5_K: returns ``scale``, ``the_min`` (≥ 0) and codes."""
    x, w = x.astype(F32), weights.astype(F32)
    mn = np.minimum(x.min(axis=1), F32(0))
    mx = x.max(axis=1)
    sum_w = seq_sum(w)
    sum_x = seq_sum(w * x)
    flat = mx == mn
    rng = np.where(flat, F32(1), mx - mn)

    def codes(iscale, mn_):
        return np.clip(nearest_int(iscale[:, None] * (x - mn_[:, None])), 0, nmax)

    def error(scale_, mn_, L_):
        diff = scale_[:, None] * L_.astype(F32) + mn_[:, None] - x
        return seq_sum(w * (np.abs(diff) if use_mad else diff * diff))

    iscale = (F32(nmax) / rng).astype(F32)
    scale = (F32(1) / iscale).astype(F32)
    L = codes(iscale, mn)
    best = error(scale, mn, L)
    for step in range(nstep + 1):
        iscale = ((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)).astype(F32)
        l = codes(iscale, mn)
        lf = l.astype(F32)
        sum_l, sum_l2, sum_xl = seq_sum(w * lf), seq_sum(w * lf * lf), seq_sum(w * lf * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = ((sum_w * sum_xl - sum_x * sum_l) / D).astype(F32)
            this_min = ((sum_l2 * sum_x - sum_l * sum_xl) / D).astype(F32)
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale).astype(F32)
        this_min = np.where(positive, F32(0), this_min)
        cur = error(this_scale, this_min, l)
        better = (D > 0) & (cur < best) & ~flat
        L = np.where(better[:, None], l, L)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    return np.where(flat, F32(0), scale), -mn, np.where(flat[:, None], 0, L)
