"""W8A8: int8 × int8 → int32 matmul with a per-token × per-channel scale epilogue.

    y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] · q_w[n, k]

(Xiao et al., SmoothQuant, 2023, §2; Dettmers et al., LLM.int8(), 2022, eq. 3.)
``q_w`` is ``(N, K)`` int8 with one scale per output channel; ``q_x`` is
``(M, K)`` int8 with one scale per token, computed at run time ("dynamic").

The file holds, in order: the PyTorch references, the Triton kernels, the
launchers.  Rounding everywhere is round-half-to-even, written out with
``floor`` so that it behaves the same compiled and in the interpreter, and
activations are scaled as ``x · (127 / max|x|)`` like bitsandbytes does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "quantize_per_token_ref",
    "int8_matmul_ref",
    "w8a8_dynamic_ref",
    "quantize_per_token",
    "int8_matmul",
    "w8a8_dynamic",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- references

def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (M, K) float -> codes (M, K) int8 and scales (M,) float32, ``x ≈ q · s``."""
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    # full_like(…)/amax, not 127.0/amax: torch computes scalar/tensor as a reciprocal times
    # the scalar, which is not correctly rounded and would differ from the kernel at ties
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(xf * inv[:, None]).clamp(-127, 127).to(torch.int8)
    return q, amax / torch.full_like(amax, 127.0)


def int8_matmul_ref(
    q_x: torch.Tensor, q_w: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, out_dtype=torch.float32
) -> torch.Tensor:
    """(M, K) int8 @ (N, K)ᵀ int8 in exact integers, times ``s_x[:, None] * s_w[None, :]``."""
    acc = q_x.double() @ q_w.double().T  # (M, N) integers, exact in float64 (|acc| < 2**53) on CPU and GPU
    return (acc.to(torch.float32) * s_x.float()[:, None] * s_w.float()[None, :]).to(out_dtype)


def w8a8_dynamic_ref(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """Quantize ``x`` per token, then :func:`int8_matmul_ref`; output in ``x.dtype``."""
    q_x, s_x = quantize_per_token_ref(x)
    return int8_matmul_ref(q_x, q_w, s_x, s_w, out_dtype=x.dtype)


# ------------------------------------------------------------------- kernels

@triton.jit
def _round_half_even(v):
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _quantize_per_token_kernel(
    # pointers
    x_ptr, q_ptr, s_ptr,
    # sizes
    K,
    # strides
    stride_xm, stride_qm,
    # meta-parameters
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    # ---- pass 1: max |x| of the row
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k + offs, mask=k + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, axis=0)
    # div_rn: IEEE division; a plain "/" compiles to an approximate divide on the GPU
    inv = tl.where(m > 0, tl.math.div_rn(tl.full((), 127.0, tl.float32), m), 0.0).to(tl.float32)
    tl.store(s_ptr + row, tl.math.div_rn(m, tl.full((), 127.0, tl.float32)))
    # ---- pass 2: codes
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k + offs, mask=k + offs < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(_round_half_even(x * inv), -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + k + offs, q.to(tl.int8), mask=k + offs < K)


@triton.jit
def _int8_matmul_kernel(
    # pointers
    a_ptr, b_ptr, sa_ptr, sb_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    # meta-parameters
    QUANTIZE_A: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BM, BK)
    b_ptrs = b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None] * stride_bk  # (BK, BN): b read transposed
    # ---- fused dynamic quantization: per-token max |a| over all of K first
    if QUANTIZE_A:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = tl.load(a_ptrs + k * stride_ak, mask=(offs_m[:, None] < M) & (offs_k[None, :] + k < K), other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(a.to(tl.float32)), axis=1))
        inv = tl.where(amax > 0, tl.math.div_rn(tl.full((BLOCK_M,), 127.0, tl.float32), amax), 0.0)
        sa = tl.math.div_rn(amax, tl.full((BLOCK_M,), 127.0, tl.float32))
    else:
        sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
    # ---- int8 dot products, int32 accumulator
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, K, BLOCK_K):
        a_mask = (offs_m[:, None] < M) & (offs_k[None, :] + k < K)
        a = tl.load(a_ptrs + k * stride_ak, mask=a_mask, other=0.0)
        if QUANTIZE_A:
            a = tl.minimum(tl.maximum(_round_half_even(a.to(tl.float32) * inv[:, None]), -127.0), 127.0)
            a = a.to(tl.int8)
        b = tl.load(b_ptrs + k * stride_bk, mask=(offs_n[None, :] < N) & (offs_k[:, None] + k < K), other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
    # ---- epilogue: per-token × per-channel scales
    sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
    c = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ----------------------------------------------------------------- launchers

def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`quantize_per_token_ref`."""
    _check(x.ndim == 2, f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    _check(x.dtype in _FLOATS, f"x has dtype {x.dtype}: expected float16, bfloat16 or float32")
    _check(x.stride(1) == 1, "x must be contiguous along K (call .contiguous())")
    M, K = x.shape
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    s = torch.empty((M,), dtype=torch.float32, device=x.device)
    _quantize_per_token_kernel[(M,)](
        x, q, s, K, x.stride(0), q.stride(0), BLOCK_K=min(1024, triton.next_power_of_2(K)),
        enable_fp_fusion=False,  # keep x·inv rounded before +0.5, as the reference does (no FMA)
    )
    return q, s


def _check_weight(q_w: torch.Tensor, s_w: torch.Tensor, K: int) -> None:
    _check(q_w.dtype == torch.int8 and q_w.ndim == 2, f"q_w must be 2-D int8 (N, K), got {q_w.dtype} {tuple(q_w.shape)}")
    _check(q_w.shape[1] == K, f"q_w has K={q_w.shape[1]} but the activations have K={K}")
    _check(s_w.shape == (q_w.shape[0],), f"s_w must have shape ({q_w.shape[0]},), got {tuple(s_w.shape)}")


def _launch(a, q_w, s_a, s_w, out, quantize_a: bool) -> torch.Tensor:
    M, K = a.shape
    N = q_w.shape[0]
    BLOCK_M = 16 if M <= 16 else 64
    BLOCK_N, BLOCK_K = 64, 64
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    _int8_matmul_kernel[grid](
        a, q_w, s_a, s_w.float().contiguous(), out, M, N, K,
        a.stride(0), a.stride(1), q_w.stride(0), q_w.stride(1), out.stride(0), out.stride(1),
        QUANTIZE_A=quantize_a, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        enable_fp_fusion=False,  # no FMA contraction: rounding ties and the epilogue match the reference
    )
    return out


def int8_matmul(
    q_x: torch.Tensor, q_w: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, out_dtype=torch.float16
) -> torch.Tensor:
    """Triton version of :func:`int8_matmul_ref`: ``(M, K) int8``, ``(N, K) int8`` -> ``(M, N) out_dtype``."""
    _check(q_x.dtype == torch.int8 and q_x.ndim == 2, f"q_x must be 2-D int8 (M, K), got {q_x.dtype} {tuple(q_x.shape)}")
    _check_weight(q_w, s_w, q_x.shape[1])
    _check(s_x.shape == (q_x.shape[0],), f"s_x must have shape ({q_x.shape[0]},), got {tuple(s_x.shape)}")
    out = torch.empty((q_x.shape[0], q_w.shape[0]), dtype=out_dtype, device=q_x.device)
    return _launch(q_x, q_w, s_x.float().contiguous(), s_w, out, quantize_a=False)


def w8a8_dynamic(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """Fused per-token quantization of ``x`` (M, K) float and int8 matmul; output in ``x.dtype``."""
    _check(x.ndim == 2, f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    _check(x.dtype in _FLOATS, f"x has dtype {x.dtype}: expected float16, bfloat16 or float32")
    _check_weight(q_w, s_w, x.shape[1])
    out = torch.empty((x.shape[0], q_w.shape[0]), dtype=x.dtype, device=x.device)
    dummy = torch.empty(1, dtype=torch.float32, device=x.device)
    return _launch(x, q_w, dummy, s_w, out, quantize_a=True)
