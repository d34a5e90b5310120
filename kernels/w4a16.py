"""W4A16: fp16/bf16 activations × 4-bit weights in the GPTQ layout, dequantized inside the kernel.

    y[m, n] = Σ_k x[m, k] · scale[g(k), n] · (q[k, n] − zero[g(k), n]),   g(k) = g_idx[k]

The weight is what ``qtutor.formats.layouts.pack_gptq(qw, version=2)`` (and
``qtutor.nn.W4A16Linear``) holds: ``qweight`` int32 (K/8, N), eight 4-bit codes of
consecutive input rows per word, lowest bits first; ``qzeros`` int32
(n_groups, N/8); ``scales`` (n_groups, N) fp16/bf16; ``g_idx`` int32 (K,) — act-order
included. Decode is memory-bound: a 4-bit weight moves a quarter of fp16's bytes,
so the kernel's job is to read ``qweight`` once, at full bandwidth.

Two kernels: a **GEMV** for small M that sums products on the CUDA cores and
splits K over programs so that a single token still fills the GPU, and a **GEMM**
for larger M that feeds dequantized tiles to ``tl.dot``; both add split-K partial
sums in one launch (``_launch.store_tile``).
File order: PyTorch reference, Triton kernels, launcher.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (check, dot_in_fp32, interpreting, pick, split_k, split_k_buffers, split_k_result, store_tile,
                      tile_grid)

__all__ = ["w4a16_ref", "w4a16_matmul", "dequantize_gptq_ref"]

_ACT_DTYPES = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- reference

def dequantize_gptq_ref(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                        g_idx: torch.Tensor) -> torch.Tensor:
    """The dense (K, N) weight of a 4-bit GPTQ-v2 layer, in ``scales.dtype`` via float32."""
    shifts = torch.arange(0, 32, 4, device=qweight.device, dtype=torch.int32)
    q = (qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF  # (K/8, 8, N)
    q = q.reshape(-1, qweight.shape[1])  # (K, N)
    z = (qzeros.unsqueeze(2) >> shifts.view(1, 1, 8)) & 0xF  # (G, N/8, 8)
    z = z.reshape(qzeros.shape[0], -1)  # (G, N)
    g = g_idx.long()
    w = (q.float() - z[g].float()) * scales[g].float()
    return w.to(scales.dtype)


def w4a16_ref(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
              g_idx: torch.Tensor) -> torch.Tensor:
    """``x`` (M, K) @ dequantized (K, N), accumulated in float32, returned in ``x.dtype``."""
    w = dequantize_gptq_ref(qweight, qzeros, scales, g_idx)
    return (x.float() @ w.float()).to(x.dtype)


# ------------------------------------------------------------------- kernels

@triton.jit
def _biased(codes, DTYPE: tl.constexpr):
    """4-bit ``codes`` (int32, 0…15) as the exact float ``B + code`` without an int→float conversion.

    OR-ing the code into the low mantissa bits of ``B`` (2²³ in float32, 1024 in
    float16, where the spacing is 1) and reinterpreting the bits is two integer
    instructions; ``cvt`` runs at a quarter of the rate. ``_biased(q) − _biased(z)``
    is ``q − z`` exactly. DTYPE is float32 or float16 (bfloat16 tiles are made in
    float32: the interpreter of triton 3.8 mis-reads bits reinterpreted as bf16).
    """
    if DTYPE == tl.float16:
        return (codes | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    else:
        return (codes | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def x_by_nibble(x_ptr, rows, mask_r):
    """``x[8r + j]`` for j = 0…7 as eight (R,) float32 tensors, from one (R, 8) load.

    Loading ``x[8r + j]`` once per j is eight strided loads per tile; one (R, 8)
    load split along its last axis (j = 4a + 2b + c: c first, then b, then a) is one
    vector load and register moves.
    """
    offs = rows[:, None] * 8 + tl.arange(0, 8)[None, :]
    xt = tl.load(x_ptr + offs, mask=mask_r[:, None], other=0.0).to(tl.float32)
    xt = tl.reshape(xt, (xt.shape[0], 2, 2, 2))
    c0, c1 = tl.split(xt)
    c0b0, c0b1 = tl.split(c0)
    c1b0, c1b1 = tl.split(c1)
    x0, x4 = tl.split(c0b0)
    x2, x6 = tl.split(c0b1)
    x1, x5 = tl.split(c1b0)
    x3, x7 = tl.split(c1b1)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _nibble_term(words, j, z, xj):
    """(code j of each word − zero) · x[8r + j], float32, for a (R, BLOCK_N) tile of words."""
    return (_biased((words >> (4 * j)) & 0xF, tl.float32) - z[None, :]) * xj[:, None]


@triton.jit
def _unit_code(words, j: tl.constexpr, ASM: tl.constexpr):
    """Code j of each word as the exact float32 ``1 + code/16``: the nibble shifted to the top four mantissa
    bits (19…22) and OR-ed into 1.0 — one shift and one LOP3, no subtraction of the zero-point.

    ``ASM``: PTX ``lop3`` computes ``(t & 0x780000) | 0x3F800000`` in one instruction (ptxas, given the two
    constants as immediates, emits two); Triton's interpreter has no inline assembly, so it runs ``& |``.
    """
    SH: tl.constexpr = 19 - 4 * j
    if SH >= 0:
        t = words << SH
    else:
        t = words >> (-SH)  # arithmetic shift: the bits it fills in lie above the mask
    if ASM:
        u = tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r",
                                      [t, tl.full(t.shape, 0x780000, tl.int32), tl.full(t.shape, 0x3F800000, tl.int32)],
                                      dtype=tl.int32, is_pure=True, pack=1)
    else:
        u = (t & 0x780000) | 0x3F800000
    return u.to(tl.float32, bitcast=True)


@triton.jit
def _group_rows(qzeros_ptr, scales_ptr, g, offs_n, mask_n, stride_zg, stride_sg, DTYPE: tl.constexpr):
    """Biased zero-points and scales of group(s) ``g`` (scalar or (R, 1)) for the columns ``offs_n``."""
    zwords = tl.load(qzeros_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
    z = _biased((zwords >> ((offs_n % 8) * 4)) & 0xF, DTYPE)
    s = tl.load(scales_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(DTYPE)
    return z, s


@triton.jit
def _w4a16_gemv_kernel(
    # pointers
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, g_idx_ptr, out_ptr, ws_ptr, cnt_ptr,
    # sizes
    M, N, K, K_PER_PROGRAM, SPLIT, ONE_LAUNCH,
    # strides
    stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
    # meta-parameters
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr, X_SPLIT: tl.constexpr,
    FOLD_ZERO: tl.constexpr, ASM: tl.constexpr,
):
    """One output row ``m``, BLOCK_N columns, a slice of K_PER_PROGRAM inputs (SPLIT slices per tile).

    A tile is R = BLOCK_K/8 packed words per column. Instead of unpacking it into a
    (BLOCK_K, BLOCK_N) tensor, take the j-th nibble of every word (input rows
    8r + j) in turn: each of the 8 steps is elementwise on the (R, BLOCK_N) tile and
    meets the matching strided slice of x. Products accumulate per (r, n), so the
    only sum across threads happens once, after the loop. With contiguous groups
    (GROUP_SIZE > 0) a tile lies in one group: the scale is applied once per tile.
    """
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    R: tl.constexpr = BLOCK_K // 8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_r = tl.arange(0, R)
    acc = tl.zeros((R, BLOCK_N), dtype=tl.float32)
    for k1 in range(0, K_PER_PROGRAM, BLOCK_K):
        k0 = pid_k * K_PER_PROGRAM + k1
        rows = k0 // 8 + offs_r
        mask_r = rows < K // 8
        words = tl.load(qweight_ptr + rows[:, None] * stride_qk + offs_n[None, :],
                        mask=mask_r[:, None] & mask_n[None, :], other=0, eviction_policy="evict_first")
        if GROUP_SIZE > 0:
            g = tl.minimum(k0, K - 1) // GROUP_SIZE  # a split-K tile may start past K: stay on a real group
            z, s = _group_rows(qzeros_ptr, scales_ptr, g, offs_n, mask_n, stride_zg, stride_sg, tl.float32)
            if FOLD_ZERO:
                # Σ_j (q_j − z)·x_j = Σ_j (1 + q_j/16)·16x_j − (16 + z)·Σ_j x_j: three instructions per weight
                # (shift, LOP3, FMA); the zero-point costs one FMA per word, on the sum of its 8 inputs
                x0, x1, x2, x3, x4, x5, x6, x7 = x_by_nibble(x_ptr + m * stride_xm, rows, mask_r)
                xs = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
                t = _unit_code(words, 0, ASM) * (16.0 * x0)[:, None]  # one chain of FMAs
                t += _unit_code(words, 1, ASM) * (16.0 * x1)[:, None]
                t += _unit_code(words, 2, ASM) * (16.0 * x2)[:, None]
                t += _unit_code(words, 3, ASM) * (16.0 * x3)[:, None]
                t += _unit_code(words, 4, ASM) * (16.0 * x4)[:, None]
                t += _unit_code(words, 5, ASM) * (16.0 * x5)[:, None]
                t += _unit_code(words, 6, ASM) * (16.0 * x6)[:, None]
                t += _unit_code(words, 7, ASM) * (16.0 * x7)[:, None]
                t -= xs[:, None] * (z - 8388592.0)[None, :]  # z is 2²³ + zero (_biased): 16 + zero
            elif X_SPLIT:
                x0, x1, x2, x3, x4, x5, x6, x7 = x_by_nibble(x_ptr + m * stride_xm, rows, mask_r)
                t = _nibble_term(words, 0, z, x0) + _nibble_term(words, 1, z, x1)
                t += _nibble_term(words, 2, z, x2) + _nibble_term(words, 3, z, x3)
                t += _nibble_term(words, 4, z, x4) + _nibble_term(words, 5, z, x5)
                t += _nibble_term(words, 6, z, x6) + _nibble_term(words, 7, z, x7)
            else:
                t = tl.zeros((R, BLOCK_N), dtype=tl.float32)
                for j in tl.static_range(8):
                    xj = tl.load(x_ptr + m * stride_xm + rows * 8 + j, mask=mask_r, other=0.0).to(tl.float32)
                    t += _nibble_term(words, j, z, xj)
            acc += t * s[None, :]
        else:  # act-order: every input row has its own group
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + m * stride_xm + rows * 8 + j, mask=mask_r, other=0.0).to(tl.float32)
                g = tl.load(g_idx_ptr + rows * 8 + j, mask=mask_r, other=0)
                z, s = _group_rows(qzeros_ptr, scales_ptr, g[:, None], offs_n[None, :],
                                   mask_r[:, None] & mask_n[None, :], stride_zg, stride_sg, tl.float32)
                acc += (_biased((words >> (4 * j)) & 0xF, tl.float32) - z) * s * xj[:, None]
    store_tile(tl.sum(acc, axis=0)[None, :], out_ptr, ws_ptr, cnt_ptr, m + tl.arange(0, 1), offs_n, M, N, stride_om,
               m * tl.num_programs(1) + pid_n, SPLIT, ONE_LAUNCH)


@triton.jit
def _dequant_tile(qweight_ptr, qzeros_ptr, scales_ptr, g_idx_ptr, k0, offs_n, K, N,
                  stride_qk, stride_zg, stride_sg,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_SIZE: tl.constexpr, DTYPE: tl.constexpr):
    """(BLOCK_K, BLOCK_N) weights in DTYPE for input rows k0 … k0+BLOCK_K−1 and output columns ``offs_n``.

    ``(q − z)`` is exact and ``· s`` rounds once, so the tile equals the reference's
    float32 product rounded to DTYPE. ``GROUP_SIZE > 0``: the tile lies inside one
    group; ``GROUP_SIZE == 0``: act-order, the group of every row from ``g_idx``.
    """
    CDT: tl.constexpr = tl.float16 if DTYPE == tl.float16 else tl.float32  # exact q − z, one rounding of · s
    mask_n = offs_n < N
    # ---- codes: read each int32 word once, unpack its 8 rows with shifts
    offs_w = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    words = tl.load(qweight_ptr + offs_w[:, None] * stride_qk + offs_n[None, :],
                    mask=(offs_w[:, None] < K // 8) & mask_n[None, :], other=0)  # (BLOCK_K/8, BLOCK_N)
    shifts = tl.arange(0, 8) * 4
    q = _biased((words[:, None, :] >> shifts[None, :, None]) & 0xF, CDT)  # (BLOCK_K/8, 8, BLOCK_N)
    q = tl.reshape(q, (BLOCK_K, BLOCK_N))
    if GROUP_SIZE > 0:
        g = tl.minimum(k0, K - 1) // GROUP_SIZE
        z, s = _group_rows(qzeros_ptr, scales_ptr, g, offs_n, mask_n, stride_zg, stride_sg, CDT)
        return ((q - z[None, :]) * s[None, :]).to(DTYPE)
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        g = tl.load(g_idx_ptr + offs_k, mask=offs_k < K, other=0)
        z, s = _group_rows(qzeros_ptr, scales_ptr, g[:, None], offs_n[None, :],
                           (offs_k < K)[:, None] & mask_n[None, :], stride_zg, stride_sg, CDT)
        return ((q - z) * s).to(DTYPE)


@triton.jit
def _w4a16_gemm_kernel(
    # pointers
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, g_idx_ptr, out_ptr, ws_ptr, cnt_ptr,
    # sizes
    M, N, K, K_PER_PROGRAM, SPLIT, ONE_LAUNCH,
    # strides
    stride_xm, stride_qk, stride_zg, stride_sg, stride_om,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """A (BLOCK_M, BLOCK_N) output tile over one of SPLIT K-slices: dequantize K-tiles of weights, ``tl.dot``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k1 in range(0, K_PER_PROGRAM, BLOCK_K):
        k0 = pid_k * K_PER_PROGRAM + k1
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = _dequant_tile(qweight_ptr, qzeros_ptr, scales_ptr, g_idx_ptr, k0, offs_n, K, N,
                          stride_qk, stride_zg, stride_sg, BLOCK_K, BLOCK_N, GROUP_SIZE, x.dtype)
        if DOT_FP32:  # the interpreter only: its bf16 x bf16 tl.dot is wrong (triton 3.8); bf16 values are exact in fp32
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
        else:
            acc += tl.dot(x, w)
    store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_om, pid_m * tl.num_programs(1) + pid_n,
               SPLIT, ONE_LAUNCH)


# ------------------------------------------------------------------ launcher

# GEMV launch parameters: the best of 58 swept on an H200 over the targets' and Llama-3-8B's shapes
# (`bench_kernels.py --sweep-gemv`, benchmarks/results/tune_gemv_h200.json): folding the zero-point took the
# five shapes' summed time from 198 µs (the best without it) to 151 µs
GEMV = {"block_n": 256, "block_k": 64, "target_programs": 2112, "num_warps": 4, "x_split": True, "fold_zero": True}
# (fold_zero implies x_split's one-load activations.) GEMM by M (the first bucket whose max_m holds M);
# BLOCK_M: the smallest power of two ≥ 16 that holds M, at most max_block_m. Chosen on an H100 by
# `bench_kernels.py --tune` (benchmarks/results/tune_h100.log).
GEMM = [
    {"max_m": 16, "block_n": 64, "block_k": 128, "target_programs": 528, "num_warps": 4, "num_stages": 3,
     "max_block_m": 16},
    {"max_m": 64, "block_n": 64, "block_k": 64, "target_programs": 528, "num_warps": 4, "num_stages": 3,
     "max_block_m": 64},
    {"max_m": None, "block_n": 64, "block_k": 64, "target_programs": 264, "num_warps": 4, "num_stages": 3,
     "max_block_m": 128},
]


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 g_idx: torch.Tensor, group_size: int | None = None, gemv_max_m: int = 1,
                 gemv: dict | None = None, gemm: dict | None = None) -> torch.Tensor:
    """``x`` (M, K) fp16/bf16 @ the 4-bit GPTQ-v2 weight -> (M, N) in ``x.dtype``.

    Rows M ≤ ``gemv_max_m`` take the split-K GEMV, larger M the split-K ``tl.dot`` GEMM.
    ``group_size``: the layer's group size when ``g_idx`` is plain ``k // group_size``
    (skips checking ``g_idx``); 0 forces the act-order path; None inspects ``g_idx``.
    ``gemv``/``gemm`` override the launch parameters (for tuning; ``gemm`` updates M's bucket of GEMM).

    Every index the kernels read through is checked first: a ``g_idx`` entry outside
    ``[0, n_groups)`` or a ``group_size`` that disagrees with the scales' shape is a
    ``ValueError`` naming the argument, never a read outside a tensor. (The values of
    ``g_idx`` are not inspected while a CUDA graph is being captured: check them on a
    first call outside the capture.) M = 0 returns an empty (0, N) result, no launch.
    """
    gemv = {**GEMV, **(gemv or {})}
    check(x.dtype in _ACT_DTYPES, f"x must be float16 or bfloat16, got {x.dtype}")
    check(x.ndim == 2, f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    for name, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
        check(t.ndim == 2, f"{name} must be 2-D, got shape {tuple(t.shape)}")
    check(g_idx.ndim == 1, f"g_idx must be 1-D (K,), got shape {tuple(g_idx.shape)}")
    check(qweight.dtype == torch.int32 and qzeros.dtype == torch.int32 and g_idx.dtype == torch.int32,
           f"qweight, qzeros and g_idx must be int32, got {qweight.dtype}, {qzeros.dtype}, {g_idx.dtype}")
    check(scales.dtype in _ACT_DTYPES, f"scales must be float16 or bfloat16, got {scales.dtype}")
    M, K = x.shape
    N = qweight.shape[1]
    check(K > 0 and K % 8 == 0, f"x has K={K}: must be a positive multiple of 8 (8 codes per int32 word)")
    check(qweight.shape[0] * 8 == K, f"qweight has {qweight.shape[0]} rows of 8 codes; x has K={K}")
    check(N > 0 and N % 8 == 0 and qzeros.shape[1] * 8 == N,
          f"qzeros {tuple(qzeros.shape)} does not pack N={N} zero-points (N must be a positive multiple of 8)")
    n_groups = scales.shape[0]
    check(n_groups >= 1 and scales.shape == (qzeros.shape[0], N),
          f"scales {tuple(scales.shape)} must be (n_groups={qzeros.shape[0]}, N={N}) with n_groups ≥ 1")
    check(g_idx.shape == (K,), f"g_idx must have K={K} entries, got {tuple(g_idx.shape)}")
    check(group_size is None or (isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= 0),
          f"group_size={group_size!r}: must be None (inspect g_idx), 0 (act-order) or a positive integer")
    if group_size:
        check(n_groups == triton.cdiv(K, group_size),
              f"group_size={group_size} gives {triton.cdiv(K, group_size)} groups for K={K}, but scales has "
              f"{n_groups} rows: allowed group sizes give ceil(K / group_size) = {n_groups}")
    for name, t in (("x", x), ("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
        check(t.device == x.device, f"{name} is on {t.device}, x on {x.device}")
        check(t.stride(-1) == 1, f"{name} must be contiguous in its last dimension")
    reads_g_idx = not group_size or group_size % 16  # the act-order path, also taken for groups not a multiple of 16
    if reads_g_idx and not _capturing(x):  # the kernel reads scales[g_idx[k]]: every entry must be a group
        lo, hi = int(g_idx.min()), int(g_idx.max())
        check(0 <= lo and hi < n_groups,
              f"g_idx holds values from {lo} to {hi}; allowed: 0 … {n_groups - 1} (scales has {n_groups} groups)")
    if M == 0:  # nothing to compute: no launch (a grid of size 0 is an error)
        return torch.empty(0, N, device=x.device, dtype=x.dtype)
    # contiguous groups (no act-order) let a tile share one row of scales: find the group size
    group = int((g_idx == 0).sum()) if n_groups > 1 and group_size is None else K
    contiguous = torch.equal(g_idx, torch.arange(K, device=g_idx.device, dtype=torch.int32) // group) \
        if group_size is None else group_size > 0
    if group_size is not None and group_size > 0:
        group = group_size
    GROUP_SIZE = group if contiguous and group % 16 == 0 else 0  # tl.dot needs K-tiles of at least 16
    if M <= gemv_max_m:
        BLOCK_N, BLOCK_K = gemv["block_n"], _block_k(gemv["block_k"], GROUP_SIZE)
        n_tiles = triton.cdiv(N, BLOCK_N)
        k_per, split = split_k(K, BLOCK_K, n_tiles * M, gemv["target_programs"])
        out, ws, cnt, one = split_k_buffers(x, M, N, M * n_tiles, split)
        _w4a16_gemv_kernel[(M, n_tiles, split)](
            x, qweight, qzeros, scales, g_idx, out, ws, cnt, M, N, K, k_per, split, one,
            x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
            BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_SIZE=GROUP_SIZE, X_SPLIT=gemv["x_split"],
            FOLD_ZERO=gemv["fold_zero"], ASM=_ptx(x),
            num_warps=gemv["num_warps"],
        )
        return split_k_result(out, ws, one)
    gemm = pick(GEMM, M, gemm)
    BLOCK_K = _block_k(gemm["block_k"], GROUP_SIZE)
    BLOCK_M, tiles, grid, k_per, split = tile_grid(M, N, K, gemm, BLOCK_K)
    out, ws, cnt, one = split_k_buffers(x, M, N, tiles, split)
    _w4a16_gemm_kernel[grid](
        x, qweight, qzeros, scales, g_idx, out, ws, cnt, M, N, K, k_per, split, one,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=gemm["block_n"], BLOCK_K=BLOCK_K, GROUP_SIZE=GROUP_SIZE, DOT_FP32=dot_in_fp32(x),
        num_warps=gemm["num_warps"], num_stages=gemm["num_stages"],
    )
    return split_k_result(out, ws, one)


def _ptx(x: torch.Tensor) -> bool:
    """True where inline PTX can run: a compiled launch on an NVIDIA GPU (not the interpreter, not ROCm)."""
    return x.is_cuda and torch.version.hip is None and not interpreting()


def _capturing(x: torch.Tensor) -> bool:
    """True while a CUDA graph is being captured: reading a tensor's values back would break the capture."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _block_k(block_k: int, group: int) -> int:
    """The largest power-of-two tile ≤ ``block_k`` that divides the group (a tile must not straddle two)."""
    if group == 0:
        return min(block_k, 64)
    while block_k > 8 and group % block_k:
        block_k //= 2
    return block_k
