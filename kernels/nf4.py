"""NF4: fp16/bf16/fp32 activations × 4-bit NormalFloat weights in the bitsandbytes layout.

    y[m, n] = Σ_k x[m, k] · code[c(n, k)] · absmax[(n·K + k) // blocksize]

The weight (N, K) is what ``bitsandbytes.functional.quantize_4bit`` (and
``qtutor.methods.nf4.quantize_4bit``) stores: the row-major flattened codes, two
per byte with the *first* in the high nibble, ``packed`` uint8 ((N·K)/2, 1);
one absmax per ``blocksize`` consecutive weights. Double-quantized
(``compress_statistics``): the absmaxes are uint8 codes into the 256-value
dynamic map ``absmax_code``, with one float32 ``absmax2`` per ``dq_blocksize``
of them and a float32 ``offset`` added back:

    absmax_f[b] = absmax_code[absmax[b]] · absmax2[b // dq_blocksize] + offset

The kernel reads the bytes as int32 words (8 codes of one row), and, like
``w4a16.py``, takes the j-th code of every word of a tile in turn; the 16-level
table is a gather from a 64-byte array that stays in L1. For M > 1 the default is
bitsandbytes' own scheme: a kernel writes the dense weight (bit for bit its
``dequantize_4bit``) and cuBLAS multiplies; the fused ``tl.dot`` GEMM remains as
``large_m="fused"``. File order: PyTorch reference, Triton kernels, launcher.

Activations may be float16, bfloat16 or float32, as bitsandbytes' ``matmul_4bit``
computes in its input's dtype (``Linear4bit``'s default compute dtype is float32):
the dequantized weight is rounded to ``x``'s dtype and the products summed in
float32 (float32 tiles multiply in IEEE float32, not TF32). Other dtypes are a
``ValueError`` (:func:`check_activations`, which ``qtutor.methods.nf4`` runs on its
PyTorch path too).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (check, dot_in_fp32, interpreting, pick, split_k, split_k_buffers, split_k_result, store_tile,
                      tile_grid)
from .w4a16 import x_by_nibble

__all__ = ["dequantize_nf4_ref", "nf4_ref", "nf4_dequantize", "nf4_matmul", "nf4_matmul_bnb", "check_activations"]

_ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_dtype(x: torch.Tensor) -> None:
    check(x.dtype in _ACT_DTYPES, f"x has dtype {x.dtype}: expected float16, bfloat16 or float32")


def check_activations(x: torch.Tensor, in_features: int) -> None:
    """``x`` (..., ``in_features``) float16, bfloat16 or float32, else ``ValueError`` naming ``x``.

    The activation checks of :func:`nf4_matmul` for a layer's (..., K) input, shared with
    ``qtutor.methods.nf4.nf4_linear``'s PyTorch path so that both paths refuse the same inputs.
    """
    _check_dtype(x)
    check(x.ndim >= 1 and x.shape[-1] == in_features,
          f"x has shape {tuple(x.shape)}: its last dimension must be the weight's in_features={in_features}")


# ---------------------------------------------------------------- reference

def _absmax_f32(absmax, absmax_code, absmax2, offset, dq_blocksize):
    if absmax.dtype != torch.uint8:
        return absmax.float()
    deq = absmax_code.float()[absmax.long()]
    blocks = torch.arange(absmax.numel(), device=absmax.device) // dq_blocksize
    return deq * absmax2.float()[blocks] + offset.float()


def dequantize_nf4_ref(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape: tuple[int, int],
                       blocksize: int = 64, absmax_code: torch.Tensor | None = None,
                       absmax2: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                       dq_blocksize: int = 256, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The dense (N, K) weight, computed in float32 in bitsandbytes' order and rounded once to ``dtype``."""
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1).long()
    n = shape[0] * shape[1]
    am = _absmax_f32(absmax, absmax_code, absmax2, offset, dq_blocksize)
    w = code.float()[codes[:n]] * am[torch.arange(n, device=packed.device) // blocksize]
    return w.reshape(shape).to(dtype)


def nf4_ref(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, out_features: int,
            **kw) -> torch.Tensor:
    """``x`` (M, K) @ the dequantized weightᵀ, accumulated in float32, returned in ``x.dtype``."""
    w = dequantize_nf4_ref(packed, absmax, code, (out_features, x.shape[1]), dtype=x.dtype, **kw)
    return (x.float() @ w.float().T).to(x.dtype)


# ------------------------------------------------------------------- kernels

@triton.jit
def _block_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, blk, mask,
                  DQ_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr):
    """float32 absmax of the blocks ``blk``, undoing the double quantization in bitsandbytes' order."""
    if DOUBLE_QUANT:
        qa = tl.load(absmax_ptr + blk, mask=mask, other=0).to(tl.int32)
        a = tl.load(absmax_code_ptr + qa) * tl.load(absmax2_ptr + blk // DQ_BLOCKSIZE, mask=mask, other=0.0)
        return a + tl.load(offset_ptr)
    else:
        return tl.load(absmax_ptr + blk, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _tile_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, offs_n, mask_n, k0, K,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCKSIZE: tl.constexpr,
                 DQ_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr):
    """(BLOCK_N, BLOCK_K/8) scales of a tile aligned to whole blocks: the tile's BLOCK_K/BLOCKSIZE absmaxes
    per row are read once (contiguous) and repeated over their words, instead of one gather per word."""
    NB: tl.constexpr = BLOCK_K // BLOCKSIZE
    offs_b = tl.arange(0, NB)
    blk = (offs_n[:, None] * K + k0) // BLOCKSIZE + offs_b[None, :]
    mask = mask_n[:, None] & (k0 + offs_b * BLOCKSIZE < K)[None, :]
    s = _block_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, blk, mask, DQ_BLOCKSIZE, DOUBLE_QUANT)
    return tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, NB, BLOCKSIZE // 8)), (BLOCK_N, BLOCK_K // 8))


@triton.jit
def _level_term(code_ptr, words, j, xj):
    """NF4 level of code j of each word times x[8r + j], for a (BLOCK_N, R) tile of words."""
    return tl.load(code_ptr + ((words >> _code_shift(j)) & 0xF)) * xj[None, :]


@triton.jit
def _code_shift(j):
    """Bit offset of the j-th code (in K order) inside a little-endian word of 4 bytes, high nibble first."""
    return 8 * (j // 2) + 4 * (1 - j % 2)


@triton.jit
def _nf4_gemv_kernel(
    # pointers
    x_ptr, words_ptr, absmax_ptr, code_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, out_ptr, ws_ptr, cnt_ptr,
    # sizes
    M, N, K, K_PER_PROGRAM, SPLIT, ONE_LAUNCH,
    # strides
    stride_xm, stride_om,
    # meta-parameters
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    X_SPLIT: tl.constexpr, ALIGNED: tl.constexpr,
):
    """Output row ``m``, BLOCK_N outputs, one K-slice; per (n, r) partial sums, one reduction at the end.

    ``ALIGNED``: K and BLOCK_K are multiples of BLOCKSIZE, so a tile holds whole blocks of each row.
    """
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    R: tl.constexpr = BLOCK_K // 8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_r = tl.arange(0, R)
    acc = tl.zeros((BLOCK_N, R), dtype=tl.float32)
    for k1 in range(0, K_PER_PROGRAM, BLOCK_K):
        k0 = pid_k * K_PER_PROGRAM + k1
        cols = k0 // 8 + offs_r  # word index inside a row
        mask = mask_n[:, None] & (cols < K // 8)[None, :]
        widx = offs_n[:, None] * (K // 8) + cols[None, :]
        words = tl.load(words_ptr + widx, mask=mask, other=0, eviction_policy="evict_first")
        if ALIGNED:
            scale = _tile_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, offs_n, mask_n, k0, K,
                                 BLOCK_N, BLOCK_K, BLOCKSIZE, DQ_BLOCKSIZE, DOUBLE_QUANT)
        else:
            scale = _block_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, (widx * 8) // BLOCKSIZE,
                                  mask, DQ_BLOCKSIZE, DOUBLE_QUANT)
        if X_SPLIT:
            x0, x1, x2, x3, x4, x5, x6, x7 = x_by_nibble(x_ptr + m * stride_xm, cols, cols < K // 8)
            t = _level_term(code_ptr, words, 0, x0) + _level_term(code_ptr, words, 1, x1)
            t += _level_term(code_ptr, words, 2, x2) + _level_term(code_ptr, words, 3, x3)
            t += _level_term(code_ptr, words, 4, x4) + _level_term(code_ptr, words, 5, x5)
            t += _level_term(code_ptr, words, 6, x6) + _level_term(code_ptr, words, 7, x7)
        else:
            t = tl.zeros((BLOCK_N, R), dtype=tl.float32)
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + m * stride_xm + cols * 8 + j, mask=cols < K // 8, other=0.0).to(tl.float32)
                t += _level_term(code_ptr, words, j, xj)
        acc += t * scale
    store_tile(tl.sum(acc, axis=1)[None, :], out_ptr, ws_ptr, cnt_ptr, m + tl.arange(0, 1), offs_n, M, N, stride_om,
               m * tl.num_programs(1) + pid_n, SPLIT, ONE_LAUNCH)


@triton.jit
def _nf4_gemm_kernel(
    # pointers
    x_ptr, words_ptr, absmax_ptr, code_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, out_ptr, ws_ptr, cnt_ptr,
    # sizes
    M, N, K, K_PER_PROGRAM, SPLIT, ONE_LAUNCH,
    # strides
    stride_xm, stride_om,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) output tile: dequantize a (BLOCK_N, BLOCK_K) weight tile, ``tl.dot`` with its transpose."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    R: tl.constexpr = BLOCK_K // 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_r = tl.arange(0, R)
    shifts = _code_shift(tl.arange(0, 8))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k1 in range(0, K_PER_PROGRAM, BLOCK_K):
        k0 = pid_k * K_PER_PROGRAM + k1
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        cols = k0 // 8 + offs_r
        mask = mask_n[:, None] & (cols < K // 8)[None, :]
        widx = offs_n[:, None] * (K // 8) + cols[None, :]
        words = tl.load(words_ptr + widx, mask=mask, other=0)  # (BLOCK_N, R)
        scale = _block_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, (widx * 8) // BLOCKSIZE, mask,
                              DQ_BLOCKSIZE, DOUBLE_QUANT)
        levels = tl.load(code_ptr + ((words[:, :, None] >> shifts[None, None, :]) & 0xF))  # (BLOCK_N, R, 8)
        w = tl.reshape(levels * scale[:, :, None], (BLOCK_N, BLOCK_K)).to(x.dtype)  # rounded once, as bitsandbytes
        if DOT_FP32:  # fp32 x (IEEE products, not TF32), or bf16 in the interpreter (its bf16 tl.dot is wrong)
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_om, pid_m * tl.num_programs(1) + pid_n,
               SPLIT, ONE_LAUNCH)


@triton.jit
def _nf4_dequant_kernel(
    words_ptr, absmax_ptr, code_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, out_ptr, N_WORDS,
    BLOCKSIZE: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, BLOCK: tl.constexpr,
):
    """The dense weight, BLOCK words (8·BLOCK values) per program: ``level · absmax`` in float32, rounded once
    to the output's dtype, as bitsandbytes' ``dequantize_4bit``. A word's 8 codes share one block
    (BLOCKSIZE is a multiple of 8), so the absmax is read once per word."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N_WORDS
    words = tl.load(words_ptr + offs, mask=mask, other=0, eviction_policy="evict_first")
    scale = _block_scales(absmax_ptr, absmax_code_ptr, absmax2_ptr, offset_ptr, (offs * 8) // BLOCKSIZE, mask,
                          DQ_BLOCKSIZE, DOUBLE_QUANT)
    j = tl.arange(0, 8)
    levels = tl.load(code_ptr + ((words[:, None] >> _code_shift(j)[None, :]) & 0xF))  # (BLOCK, 8)
    w = levels * scale[:, None]
    tl.store(out_ptr + offs[:, None] * 8 + j[None, :], w.to(out_ptr.dtype.element_ty), mask=mask[:, None])


# ------------------------------------------------------------------ launcher

# GEMV and dequantize launch parameters: the best swept on an H200 over the targets' and Llama-3-8B's shapes
# (`bench_kernels.py --sweep-gemv`, benchmarks/results/tune_gemv_h200.json); GEMM: chosen on an H100 (`--tune`)
GEMV = {"block_n": 64, "block_k": 128, "target_programs": 2112, "num_warps": 4, "x_split": True}
GEMM = [
    {"max_m": 16, "block_n": 128, "block_k": 128, "target_programs": 528, "num_warps": 4, "num_stages": 3,
     "max_block_m": 16},
    {"max_m": None, "block_n": 128, "block_k": 128, "target_programs": 528, "num_warps": 4, "num_stages": 3,
     "max_block_m": 64},
]
DEQUANT = {"block": 512, "num_warps": 4}  # words per program of the dequantize kernel
# M > gemv_max_m: "dequant" (the default) writes the dense weight with the dequantize kernel and multiplies
# with torch.matmul (cuBLAS), bitsandbytes' own way for M > 1; "fused" runs the tl.dot GEMM, which gathers
# each level from the 16-entry table per weight and was 4-16x slower than bitsandbytes' dequantize + cuBLAS
# at M >= 4 on an H200 (benchmarks/results/kernels_h200.json as of commit a5fd76c).
LARGE_M = ("dequant", "fused")


def _weight_args(packed, absmax, code, out_features, K, blocksize, absmax_code, absmax2, offset, dq_blocksize,
                 device):
    """Check the NF4 weight's fields (``ValueError`` naming the argument) and return the kernels' arguments:
    ``(words, absmax, absmax_code, absmax2, offset, double)``."""
    N = out_features
    check(isinstance(N, int) and not isinstance(N, bool) and N > 0, f"out_features={N!r}: must be a positive integer")
    for name, v in (("blocksize", blocksize), ("dq_blocksize", dq_blocksize)):
        check(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name}={v!r}: must be a positive integer")
    check(K > 0, f"x has K={K}: the weight needs at least one input column")
    check(packed.dtype == torch.uint8 and packed.is_contiguous(), f"packed must be contiguous uint8, got {packed.dtype}")
    check(packed.numel() * 2 == N * K, f"packed holds {packed.numel() * 2} codes, the weight ({N}, {K}) needs {N * K}")
    check(K % 8 == 0, f"K={K} must be a multiple of 8 (the kernel reads 8 codes of a row at a time)")
    check(blocksize % 8 == 0, f"blocksize={blocksize} must be a multiple of 8 (a word of 8 codes in one block)")
    check(packed.data_ptr() % 4 == 0, "packed must be 4-byte aligned (read as int32 words)")
    check(code.dtype == torch.float32 and code.numel() == 16 and code.is_contiguous(),
          f"code must be 16 float32 levels (contiguous), got {code.dtype} {tuple(code.shape)}")
    n_blocks = triton.cdiv(N * K, blocksize)
    check(absmax.numel() == n_blocks, f"absmax has {absmax.numel()} entries, the weight has {n_blocks} blocks")
    double = absmax.dtype == torch.uint8
    if double:
        check(absmax_code is not None and absmax2 is not None and offset is not None,
               "uint8 absmax (double quantization) needs absmax_code, absmax2 and offset")
        check(absmax2.numel() == triton.cdiv(n_blocks, dq_blocksize),
               f"absmax2 has {absmax2.numel()} entries, expected {triton.cdiv(n_blocks, dq_blocksize)}")
        # the kernel reads absmax_code[absmax[b]] for uint8 codes 0…255 and one offset
        check(absmax_code.numel() == 256, f"absmax_code must hold the 256 values of the dynamic map, got "
                                          f"{absmax_code.numel()}")
        check(offset.numel() == 1, f"offset must be one value, got {offset.numel()}")
        for name, t in (("absmax_code", absmax_code), ("absmax2", absmax2), ("offset", offset)):
            check(t.device == device, f"{name} is on {t.device}, x on {device}")
        absmax_code, absmax2 = absmax_code.float().contiguous(), absmax2.float().contiguous()
        offset = offset.float().reshape(1)
    else:
        check(absmax.dtype == torch.float32, f"absmax must be float32 or uint8 codes, got {absmax.dtype}")
        absmax_code = absmax2 = offset = absmax  # unused
    for name, t in (("packed", packed), ("absmax", absmax), ("code", code)):
        check(t.device == device, f"{name} is on {t.device}, x on {device}")
    return packed.view(-1).view(torch.int32), absmax.contiguous(), absmax_code, absmax2, offset, double


def _dequantize(words, absmax, code, absmax_code, absmax2, offset, N, K, blocksize, dq_blocksize, double, dtype):
    # Triton's interpreter (3.8) casts float32 to bfloat16 by truncation, the GPU rounds to nearest: there the
    # kernel writes float32 and torch rounds it, the same bits as the compiled kernel's own cast
    bf16_via_fp32 = dtype == torch.bfloat16 and interpreting()
    out = torch.empty(N, K, device=words.device, dtype=torch.float32 if bf16_via_fp32 else dtype)
    n_words = words.numel()
    _nf4_dequant_kernel[(triton.cdiv(n_words, DEQUANT["block"]),)](
        words, absmax, code, absmax_code, absmax2, offset, out, n_words,
        BLOCKSIZE=blocksize, DQ_BLOCKSIZE=dq_blocksize, DOUBLE_QUANT=double, BLOCK=DEQUANT["block"],
        num_warps=DEQUANT["num_warps"],
        enable_fp_fusion=False,  # code2[a]·absmax2 and + offset rounded apart, as bitsandbytes: bit for bit
    )
    return out.to(dtype)


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape: tuple[int, int],
                   blocksize: int = 64, absmax_code: torch.Tensor | None = None,
                   absmax2: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                   dq_blocksize: int = 256, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The dense (N, K) weight in ``dtype``, bit for bit :func:`dequantize_nf4_ref` (and bitsandbytes'
    ``dequantize_4bit``): each level times its block's float32 absmax, rounded once."""
    check(dtype in _ACT_DTYPES, f"dtype={dtype}: expected torch.float16, torch.bfloat16 or torch.float32")
    check(isinstance(shape, (tuple, list)) and len(shape) == 2 and all(isinstance(v, int) for v in shape),
          f"shape={shape!r}: must be (out_features, in_features)")
    N, K = shape
    words, absmax, absmax_code, absmax2, offset, double = _weight_args(
        packed, absmax, code, N, K, blocksize, absmax_code, absmax2, offset, dq_blocksize, packed.device)
    return _dequantize(words, absmax, code, absmax_code, absmax2, offset, N, K, blocksize, dq_blocksize, double,
                       dtype)


def nf4_matmul(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, out_features: int,
               blocksize: int = 64, absmax_code: torch.Tensor | None = None, absmax2: torch.Tensor | None = None,
               offset: torch.Tensor | None = None, dq_blocksize: int = 256, gemv_max_m: int = 1,
               gemv: dict | None = None, gemm: dict | None = None, large_m: str = "dequant") -> torch.Tensor:
    """``x`` (M, K) fp16/bf16/fp32 @ the NF4 weight (``out_features``, K)ᵀ -> (M, out_features) in ``x.dtype``.

    ``absmax`` float32 (one per block), or uint8 codes with ``absmax_code``,
    ``absmax2`` and ``offset`` when double-quantized. ``code``: the 16 levels
    (NF4 or FP4), float32. M ≤ ``gemv_max_m`` takes the GEMV; larger M, by
    ``large_m``, the dequantize kernel + ``torch.matmul`` ("dequant": it allocates the
    dense (out_features, K) weight in ``x.dtype`` for the call, as bitsandbytes does) or
    the fused ``tl.dot`` GEMM ("fused"). Every size the kernels index with is checked first
    (``ValueError`` naming the argument); M = 0 returns an empty (0, out_features)
    result without a launch.
    """
    gemv = {**GEMV, **(gemv or {})}
    _check_dtype(x)
    check(x.ndim == 2 and x.stride(1) == 1, f"x must be 2-D (M, K) and contiguous along K, got {tuple(x.shape)}")
    check(large_m in LARGE_M, f"large_m={large_m!r}: allowed values are {LARGE_M}")
    M, K = x.shape
    N = out_features
    words, absmax, absmax_code, absmax2, offset, double = _weight_args(
        packed, absmax, code, N, K, blocksize, absmax_code, absmax2, offset, dq_blocksize, x.device)
    if M == 0:  # nothing to compute: no launch (a grid of size 0 is an error)
        return torch.empty(0, N, device=x.device, dtype=x.dtype)
    common = dict(BLOCKSIZE=blocksize, DQ_BLOCKSIZE=dq_blocksize, DOUBLE_QUANT=double)
    if M <= gemv_max_m:
        BLOCK_N = gemv["block_n"]
        BLOCK_K = min(gemv["block_k"], max(8, triton.next_power_of_2(K)))
        n_tiles = triton.cdiv(N, BLOCK_N)
        k_per, split = split_k(K, BLOCK_K, n_tiles * M, gemv["target_programs"])
        out, ws, cnt, one = split_k_buffers(x, M, N, M * n_tiles, split)
        _nf4_gemv_kernel[(M, n_tiles, split)](
            x, words, absmax, code, absmax_code, absmax2, offset, out, ws, cnt, M, N, K, k_per, split, one,
            x.stride(0), out.stride(0), BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, **common, X_SPLIT=gemv["x_split"],
            ALIGNED=K % blocksize == 0 and BLOCK_K % blocksize == 0, num_warps=gemv["num_warps"],
        )
        return split_k_result(out, ws, one)
    if large_m == "dequant":  # the weight rounded to x's dtype, as the GEMV and bitsandbytes; cuBLAS sums in fp32
        w = _dequantize(words, absmax, code, absmax_code, absmax2, offset, N, K, blocksize, dq_blocksize, double,
                        x.dtype)
        return torch.matmul(x, w.t())
    gemm = pick(GEMM, M, gemm)
    BLOCK_K = min(gemm["block_k"], max(16, triton.next_power_of_2(K)))
    BLOCK_M, tiles, grid, k_per, split = tile_grid(M, N, K, gemm, BLOCK_K)
    out, ws, cnt, one = split_k_buffers(x, M, N, tiles, split)
    _nf4_gemm_kernel[grid](
        x, words, absmax, code, absmax_code, absmax2, offset, out, ws, cnt, M, N, K, k_per, split, one,
        x.stride(0), out.stride(0), BLOCK_M=BLOCK_M, BLOCK_N=gemm["block_n"], BLOCK_K=BLOCK_K, **common,
        DOT_FP32=dot_in_fp32(x) or x.dtype == torch.float32, num_warps=gemm["num_warps"], num_stages=gemm["num_stages"],
    )
    return split_k_result(out, ws, one)


def nf4_matmul_bnb(x: torch.Tensor, packed: torch.Tensor, quant_state, **kw) -> torch.Tensor:
    """:func:`nf4_matmul` on what ``bitsandbytes.functional.quantize_4bit`` returns (its ``QuantState``)."""
    qs = quant_state
    dq = {}
    if qs.nested:
        dq = dict(absmax_code=qs.state2.code, absmax2=qs.state2.absmax, offset=qs.offset,
                  dq_blocksize=qs.state2.blocksize)
    return nf4_matmul(x, packed, qs.absmax, qs.code.float(), qs.shape[0], qs.blocksize, **dq, **kw)
