"""LLM.int8() on the GPU: the decomposed int8 + fp16 matmul in two kernels, with no host synchronisation.

    Y = fp16( s_x s_wᵀ ⊙ (C_x C_wᵀ) / 127² )  +  X[:, O] · fp16(C_w[:, O] ⊙ s_w / 127)ᵀ

(Dettmers et al., 2022, §3.) ``O`` is the set of input columns holding any
``|x| ≥ threshold``. bitsandbytes finds ``O`` with ``argwhere`` — a copy to the
host that stalls the GPU every call — then gathers those columns and runs
separate kernels. Here a first kernel marks outlier columns in a flag vector and
takes each row's absmax without its outliers; the second quantizes the
activations on the fly, multiplies int8 × int8 on the tensor cores, and, in the
K-tiles where a flag is set, adds the fp16 product of the outlier columns. The
roundings follow bitsandbytes 0.50 (``int8_vectorwise_quant``,
``int8_mm_dequant``, ``int8_mixed_scaled_mm``), as :mod:`qtutor.methods.llm_int8`
does on the CPU; only the order of the fp32 sums inside the dot products differs.
File order: reference, Triton kernels, launcher.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check, pick, split_k_buffers, split_k_result, store_tile, tile_grid

from .w8a8 import _round_half_even

__all__ = ["llm_int8_ref", "llm_int8_matmul", "check_threshold", "check_operands"]

_INV_127 = 7.874015718698502e-3  # bitsandbytes' constants
_INV_127_SQ = 6.200124e-05


# ---------------------------------------------------------------- reference

def check_threshold(threshold: float) -> None:
    """The outlier threshold: a number ≥ 0 (0 turns the outlier path off); NaN and negatives are refused.

    The same check as the CPU path's (``qtutor.methods.llm_int8._check_threshold``): both
    paths raise ``ValueError`` for the same thresholds. ``inf`` is accepted (no column is an outlier).
    """
    if isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) and threshold >= 0):  # NaN fails too
        raise ValueError(f"threshold={threshold!r}: must be a number ≥ 0 (0 turns the outlier path off)")


def check_operands(x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor) -> None:
    """Shapes and dtypes of the decomposition's operands, checked the same way on every path."""
    check(x.dtype == torch.float16, f"x has dtype {x.dtype}: LLM.int8() multiplies float16 activations")
    check(x.ndim == 2, f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    K = x.shape[1]
    check(CB.dtype == torch.int8 and CB.ndim == 2 and CB.shape[1] == K,
          f"CB must be int8 (N, {K}), got {CB.dtype} {tuple(CB.shape)}")
    N = CB.shape[0]
    check(SCB.shape == (N,) and SCB.dtype == torch.float32,
          f"SCB must be float32 ({N},), got {SCB.dtype} {tuple(SCB.shape)}")


def llm_int8_ref(x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """bitsandbytes' decomposition step by step in PyTorch: ``x`` (M, K) fp16, ``CB`` (N, K) int8 -> (M, N) fp16.

    ``int8_vectorwise_quant`` (row absmax without the outlier entries, outlier columns
    zeroed), the exact integer product scaled by ``s_x s_wᵀ / 127²`` and rounded to
    fp16 (``int8_mm_dequant``), plus the fp16 product of the outlier columns
    (``int8_mixed_scaled_mm``); the same steps as ``qtutor.methods.llm_int8`` on the CPU.
    """
    check_operands(x, CB, SCB)
    check_threshold(threshold)
    cols = torch.empty(0, dtype=torch.long, device=x.device)
    a = x
    if threshold > 0.0:
        outliers = x.abs() >= threshold
        if outliers.any():
            cols = torch.argwhere(outliers.any(dim=0)).view(-1)
            a = x.masked_fill(outliers, 0)  # outliers must not set the row's scale
    SCA = a.abs().amax(dim=1).float() if x.shape[1] else torch.zeros(x.shape[0], device=x.device)  # (M,)
    CA = torch.round(a * (127.0 / SCA.unsqueeze(-1))).to(torch.int8)  # (M, K)
    if x.shape[0] > 1 and cols.numel():
        CA[:, cols] = 0
    acc = (CA.double() @ CB.double().T).float()  # exact (|sums| < 2⁵³), then int → float32 as bitsandbytes
    out = (acc * (SCA.unsqueeze(-1) * SCB.unsqueeze(0)) * _INV_127_SQ).to(torch.float16)
    if cols.numel():
        sub_w = (CB[:, cols].contiguous() * SCB.view(-1, 1) * _INV_127).to(torch.float16).t()  # (|O|, N)
        out = out.addmm(x[:, cols].contiguous(), sub_w)
    return out


# ------------------------------------------------------------------- kernels

@triton.jit
def _row_stats_kernel(
    # pointers
    x_ptr, flags_ptr, inv_ptr, stat_ptr,
    # sizes
    K, threshold,
    # strides
    stride_xm,
    # meta-parameters
    BLOCK_K: tl.constexpr, HAS_OUTLIERS: tl.constexpr,
):
    """Row ``m``: absmax over its non-outlier entries, ``127 / absmax``, and flags on the outlier columns."""
    m = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        mask = k + offs < K
        a = tl.abs(tl.load(x_ptr + m * stride_xm + k + offs, mask=mask, other=0.0).to(tl.float32))
        if HAS_OUTLIERS:
            out = a >= threshold
            tl.atomic_max(flags_ptr + k + offs, tl.full((BLOCK_K,), 1, tl.int32), mask=mask & out)
            a = tl.where(out, 0.0, a)
        amax = tl.maximum(amax, a)
    s = tl.max(amax, axis=0)
    tl.store(stat_ptr + m, s)
    # torch's 127.0 / s is reciprocal(s) * 127; an all-zero row gets codes 0
    tl.store(inv_ptr + m, tl.where(s > 0, tl.math.div_rn(tl.full((), 1.0, tl.float32), s) * 127.0, 0.0))


@triton.jit
def _llm_int8_kernel(
    # pointers
    x_ptr, cb_ptr, flags_ptr, inv_ptr, stat_ptr, scb_ptr, out_ptr, ws_ptr, cnt_ptr,
    # sizes
    M, N, K, K_PER_PROGRAM, SPLIT, ONE_LAUNCH,
    # strides
    stride_xm, stride_cn, stride_om,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_OUTLIERS: tl.constexpr,
    SKIP_CLEAN_TILES: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    inv = tl.load(inv_ptr + offs_m, mask=mask_m, other=0.0)
    scb = tl.load(scb_ptr + offs_n, mask=mask_n, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_o = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k1 in range(0, K_PER_PROGRAM, BLOCK_K):
        offs_k = pid_k * K_PER_PROGRAM + k1 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0)
        b = tl.load(cb_ptr + offs_n[None, :] * stride_cn + offs_k[:, None], mask=mask_k[:, None] & mask_n[None, :],
                    other=0)  # (BLOCK_K, BLOCK_N): C_w read transposed
        q = tl.minimum(tl.maximum(_round_half_even(x.to(tl.float32) * inv[:, None]), -127.0), 127.0)
        if HAS_OUTLIERS:
            flag = tl.load(flags_ptr + offs_k, mask=mask_k, other=0)
            q = tl.where(flag[None, :] != 0, 0.0, q)
            if SKIP_CLEAN_TILES:
                if tl.max(flag, axis=0) > 0:  # this K-tile holds outlier columns: their fp16 product
                    xo = tl.where(flag[None, :] != 0, x, 0.0)
                    wo = ((b.to(tl.float32) * scb[None, :]) * 7.874015718698502e-3).to(tl.float16)
                    acc_o += tl.dot(xo, wo)
            else:  # every tile: zeros where no column is an outlier
                xo = tl.where(flag[None, :] != 0, x, 0.0)
                wo = ((b.to(tl.float32) * scb[None, :]) * 7.874015718698502e-3).to(tl.float16)
                acc_o += tl.dot(xo, wo)
        acc += tl.dot(q.to(tl.int8), b, out_dtype=tl.int32)
    stat = tl.load(stat_ptr + offs_m, mask=mask_m, other=0.0)
    y = (acc.to(tl.float32) * (stat[:, None] * scb[None, :])) * 6.200124e-05
    if SPLIT == 1:  # bitsandbytes rounds the int8 part to fp16, then adds the fp16 part in fp32 (addmm, beta = 1)
        y = y.to(tl.float16).to(tl.float32)
    store_tile(y + acc_o, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_om,
               pid_m * tl.num_programs(1) + pid_n, SPLIT, ONE_LAUNCH)


# ------------------------------------------------------------------ launcher

# launch parameters, chosen on an H100 with `benchmarks/bench_kernels.py --tune`
LAUNCH = [
    {"max_m": None, "block_n": 128, "block_k": 128, "target_programs": 528, "num_warps": 4, "num_stages": 3,
     "max_block_m": 64},
]


SKIP_CLEAN_TILES = True  # skip the fp16 product in K-tiles without outlier columns (False: add zeros there)


def llm_int8_matmul(x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float = 6.0,
                    launch: dict | None = None) -> torch.Tensor:
    """``x`` (M, K) fp16 times the int8 weight ``CB`` (N, K) with row absmax ``SCB`` (N,) -> (M, N) fp16.

    Small outputs split K over programs (fp32 atomics; the int8 part is then not
    rounded to fp16 before the outliers are added — a difference of at most one
    fp16 rounding from bitsandbytes).
    """
    check_operands(x, CB, SCB)
    check(x.stride(1) == 1, f"x must be contiguous along K, got strides {x.stride()}")
    check(CB.stride(1) == 1, f"CB must be contiguous along K, got strides {CB.stride()}")
    check_threshold(threshold)
    M, K = x.shape
    N = CB.shape[0]
    for name, t in (("CB", CB), ("SCB", SCB)):
        check(t.device == x.device, f"{name} is on {t.device}, x on {x.device}")
    if M == 0 or N == 0:  # nothing to compute: no launch (a grid of size 0 is an error)
        return torch.empty(M, N, dtype=torch.float16, device=x.device)
    if K == 0:
        return torch.zeros(M, N, dtype=torch.float16, device=x.device)
    has_outliers = threshold > 0
    flags = torch.zeros(K, dtype=torch.int32, device=x.device)
    inv = torch.empty(M, dtype=torch.float32, device=x.device)
    stat = torch.empty(M, dtype=torch.float32, device=x.device)
    _row_stats_kernel[(M,)](x, flags, inv, stat, K, float(threshold), x.stride(0),
                            BLOCK_K=min(1024, triton.next_power_of_2(K)), HAS_OUTLIERS=has_outliers)
    p = pick(LAUNCH, M, launch)
    BLOCK_M, tiles, grid, k_per, split = tile_grid(M, N, K, p, p["block_k"])
    out, ws, cnt, one = split_k_buffers(x, M, N, tiles, split)
    _llm_int8_kernel[grid](
        x, CB, flags, inv, stat, SCB, out, ws, cnt, M, N, K, k_per, split, one,
        x.stride(0), CB.stride(0), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=p["block_n"], BLOCK_K=p["block_k"],
        HAS_OUTLIERS=has_outliers, SKIP_CLEAN_TILES=SKIP_CLEAN_TILES, num_warps=p["num_warps"],
        num_stages=p["num_stages"],
        enable_fp_fusion=False,  # no FMA contraction: the roundings are bitsandbytes'
    )
    return split_k_result(out, ws, one)
