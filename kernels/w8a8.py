"""W8A8: int8 × int8 → int32, or fp8 × fp8 → fp32, matmul with a per-token × per-channel scale epilogue.

    y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] · q_w[n, k]

(Xiao et al., SmoothQuant, 2023, §2; Dettmers et al., LLM.int8(), 2022, eq. 3;
Micikevicius et al., "FP8 Formats for Deep Learning", 2022.)
``q_w`` is ``(N, K)`` int8 or fp8 e4m3 with one scale per output channel; ``q_x``
is ``(M, K)`` of the same type with one scale per token, computed at run time
("dynamic"). int8 codes are ``round(x · 127 / max|x|)``; fp8 codes are
``fp8(x · 448 / max|x|)`` (448 is e4m3's largest finite value; the cast rounds
to nearest even), so both formats share one kernel and differ in the rounding
and the accumulator (int32 for int8, float32 for fp8).

The file holds, in order: the PyTorch references, the Triton kernels, the
launchers.  Rounding everywhere is round-half-to-even, written out with
``floor`` so that it behaves the same compiled and in the interpreter, and
activations are scaled as ``x · (127 / max|x|)`` like bitsandbytes does.
A row whose max |x| is below :data:`MIN_AMAX` (2⁻¹¹⁹, about 1.5e-36) is scaled as if
its max were 2⁻¹¹⁹: ``127 / max|x|`` or ``448 / max|x|`` would overflow float32 to
inf, giving int8 codes of ±127 for every nonzero entry and fp8 NaN codes (0 · inf).
The floored scale is a little too large for such a row (fewer levels used), never wrong.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check, pick, split_k

__all__ = [
    "quantize_per_token_ref",
    "int8_matmul_ref",
    "w8a8_dynamic_ref",
    "quantize_per_token",
    "int8_matmul",
    "fp8_matmul",
    "w8a8_dynamic",
    "FP8",
    "MIN_AMAX",
    "check_operands",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
FP8 = torch.float8_e4m3fn
_QMAX = {torch.int8: 127.0, FP8: 448.0}
# below 448 / 3.4e38 ≈ 1.3e-36 (int8: 127 / 3.4e38) the quotient qmax / max|x| overflows float32; a smaller
# (nonzero) row max is raised to 2⁻¹¹⁹, the floor of qtutor.methods.fp8 (an exact float32, so the kernels'
# literal and the reference's agree)
MIN_AMAX = 2.0**-119
_MIN_AMAX = tl.constexpr(MIN_AMAX)


# ---------------------------------------------------------------- references

def quantize_per_token_ref(x: torch.Tensor, dtype: torch.dtype = torch.int8) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (M, K) float -> codes (M, K) ``dtype`` (int8 or fp8 e4m3) and scales (M,) float32, ``x ≈ q · s``.

    ``q = round(x · (qmax / max|x|))``, ``s = max|x| / qmax``, with ``max|x|`` raised to
    :data:`MIN_AMAX` in a nonzero row whose max is smaller (an all-zero row keeps ``s = 0``).
    """
    qmax = _QMAX[dtype]
    xf = x.float()
    amax = xf.abs().amax(dim=1) if xf.shape[1] else xf.new_zeros(xf.shape[0])  # (M,); K = 0: max|x| = 0
    amax = torch.where(amax > 0, amax.clamp(min=MIN_AMAX), amax)  # see MIN_AMAX: qmax / amax stays finite
    # full_like(…)/amax, not 127.0/amax: torch computes scalar/tensor as a reciprocal times
    # the scalar, which is not correctly rounded and would differ from the kernel at ties
    inv = torch.where(amax > 0, torch.full_like(amax, qmax) / amax, torch.zeros_like(amax))
    v = (xf * inv[:, None]).clamp(-qmax, qmax)
    q = v.to(FP8) if dtype == FP8 else torch.round(v).to(torch.int8)
    return q, amax / torch.full_like(amax, qmax)


def int8_matmul_ref(
    q_x: torch.Tensor, q_w: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, out_dtype=torch.float32
) -> torch.Tensor:
    """(M, K) @ (N, K)ᵀ codes (int8, or fp8 e4m3) summed exactly, times ``s_x[:, None] * s_w[None, :]``.

    int8 products are integers and fp8 e4m3 products multiples of 2⁻¹⁸ below 2¹⁸: float64 sums of
    either are exact, so the reference is the exact value, rounded once to float32.
    """
    acc = q_x.double() @ q_w.double().T
    return (acc.to(torch.float32) * s_x.float()[:, None] * s_w.float()[None, :]).to(out_dtype)


def w8a8_dynamic_ref(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """Quantize ``x`` per token to ``q_w``'s type, then :func:`int8_matmul_ref`; output in ``x.dtype``."""
    q_x, s_x = quantize_per_token_ref(x, q_w.dtype)
    return int8_matmul_ref(q_x, q_w, s_x, s_w, out_dtype=x.dtype)


# ------------------------------------------------------------------- kernels

@triton.jit
def _round_half_even(v):
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _round_e4m3(t):
    """float32 ``t`` (|t| ≤ 448) rounded to the nearest e4m3 value, ties to even, still as float32.

    Normal range: round the fp32 bits to 3 mantissa bits (a carry moves into the
    exponent); below 2⁻⁶ e4m3 is subnormal with a fixed step 2⁻⁹, which adding and
    subtracting 2¹⁴ rounds to. Done by hand because the triton 3.8 interpreter's own
    fp32 → e4m3 cast loses the carry (124.3 → 64); the cast of the result is exact.
    """
    bits = t.to(tl.int32, bitcast=True)
    normal = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # keep sign, exponent, 3 mantissa bits
    sub = ((tl.abs(t) + 16384.0) - 16384.0).to(tl.int32, bitcast=True) | (bits & -2147483648)  # sign kept: -0
    return tl.where(tl.abs(t) < 0.015625, sub, normal).to(tl.float32, bitcast=True)


@triton.jit
def _codes(v, inv, QMAX: tl.constexpr):
    """``v · inv`` clamped to ±QMAX as int8 (round half to even) or fp8 e4m3 (QMAX = 448, nearest even)."""
    t = tl.minimum(tl.maximum(v * inv, -QMAX), QMAX)
    if QMAX == 448.0:
        return _round_e4m3(t).to(tl.float8e4nv)
    else:
        return _round_half_even(t).to(tl.int8)


@triton.jit
def _quantize_per_token_kernel(
    # pointers
    x_ptr, q_ptr, s_ptr,
    # sizes
    K,
    # strides
    stride_xm, stride_qm,
    # meta-parameters
    BLOCK_K: tl.constexpr, QMAX: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    # ---- pass 1: max |x| of the row
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k + offs, mask=k + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, axis=0)
    m = tl.where(m > 0, tl.maximum(m, _MIN_AMAX), m)  # see MIN_AMAX: QMAX / m stays finite
    # div_rn: IEEE division; a plain "/" compiles to an approximate divide on the GPU
    inv = tl.where(m > 0, tl.math.div_rn(tl.full((), QMAX, tl.float32), m), 0.0).to(tl.float32)
    tl.store(s_ptr + row, tl.math.div_rn(m, tl.full((), QMAX, tl.float32)))
    # ---- pass 2: codes
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k + offs, mask=k + offs < K, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * stride_qm + k + offs, _codes(x, inv, QMAX), mask=k + offs < K)


@triton.jit
def _int8_matmul_kernel(
    # pointers
    a_ptr, b_ptr, sa_ptr, sb_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    # meta-parameters
    QUANTIZE_A: tl.constexpr, QMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
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
        amax = tl.where(amax > 0, tl.maximum(amax, _MIN_AMAX), amax)  # see MIN_AMAX
        inv = tl.where(amax > 0, tl.math.div_rn(tl.full((BLOCK_M,), QMAX, tl.float32), amax), 0.0)
        sa = tl.math.div_rn(amax, tl.full((BLOCK_M,), QMAX, tl.float32))
    else:
        sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
    # ---- int8 dot products into int32, fp8 into fp32
    ACC: tl.constexpr = tl.float32 if QMAX == 448.0 else tl.int32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(0, K, BLOCK_K):
        a_mask = (offs_m[:, None] < M) & (offs_k[None, :] + k < K)
        a = tl.load(a_ptrs + k * stride_ak, mask=a_mask, other=0.0)
        if QUANTIZE_A:
            a = _codes(a.to(tl.float32), inv[:, None], QMAX)
        b = tl.load(b_ptrs + k * stride_bk, mask=(offs_n[None, :] < N) & (offs_k[:, None] + k < K), other=0.0)
        acc += tl.dot(a, b, out_dtype=ACC)
    # ---- epilogue: per-token × per-channel scales
    sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
    c = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ----------------------------------------------------------------- launchers

def quantize_per_token(x: torch.Tensor, dtype: torch.dtype = torch.int8) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`quantize_per_token_ref` (``dtype`` int8 or ``FP8``)."""
    check(x.ndim == 2, f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    check(x.dtype in _FLOATS, f"x has dtype {x.dtype}: expected float16, bfloat16 or float32")
    check(dtype in _QMAX, f"codes must be torch.int8 or torch.float8_e4m3fn, got {dtype}")
    check(x.stride(1) == 1, "x must be contiguous along K (call .contiguous())")
    M, K = x.shape
    q = torch.empty((M, K), dtype=dtype, device=x.device)
    s = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0 or K == 0:  # nothing to read: no launch (an empty row has max|x| = 0, so scale 0, as the reference)
        return q, s.zero_()
    _quantize_per_token_kernel[(M,)](
        x, q, s, K, x.stride(0), q.stride(0), BLOCK_K=min(1024, triton.next_power_of_2(K)), QMAX=_QMAX[dtype],
        enable_fp_fusion=False,  # keep x·inv rounded before +0.5, as the reference does (no FMA)
    )
    return q, s


def _check_weight(q_w: torch.Tensor, s_w: torch.Tensor, K: int) -> None:
    check(q_w.dtype in _QMAX and q_w.ndim == 2,
           f"q_w must be 2-D int8 or float8_e4m3fn (N, K), got {q_w.dtype} {tuple(q_w.shape)}")
    check(q_w.shape[1] == K, f"q_w has K={q_w.shape[1]} but the activations have K={K}")
    check(s_w.shape == (q_w.shape[0],) and s_w.is_floating_point(),
          f"s_w must have shape ({q_w.shape[0]},) and a float dtype, got {s_w.dtype} {tuple(s_w.shape)}")


def check_operands(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor) -> None:
    """Activations ``x`` (..., K) float16/bfloat16/float32, codes ``q_w`` (N, K), scales ``s_w`` (N,) float.

    :func:`w8a8_dynamic`'s checks (it also needs ``x`` 2-D); ``qtutor.methods.w8a8`` runs them on its
    PyTorch path too, so both paths refuse the same inputs with the same ``ValueError``.
    """
    check(x.dtype in _FLOATS, f"x has dtype {x.dtype}: expected float16, bfloat16 or float32")
    check(x.ndim >= 1, "x must have at least one dimension (..., K), got a scalar")
    _check_weight(q_w, s_w, x.shape[-1])


# launch parameters by M (the first bucket whose "max_m" holds M), chosen for int8 on an H100 with
# `benchmarks/bench_kernels.py --tune` (M ≤ 64; the last bucket was not swept)
LAUNCH = [
    {"max_m": 16, "block_m": 16, "block_n": 64, "block_k": 256, "num_warps": 4, "num_stages": 3},
    {"max_m": 64, "block_m": 64, "block_n": 128, "block_k": 128, "num_warps": 8, "num_stages": 3},
    {"max_m": None, "block_m": 128, "block_n": 128, "block_k": 128, "num_warps": 8, "num_stages": 3},
]


def _launch(a, q_w, s_a, s_w, out, quantize_a: bool, launch: dict | None) -> torch.Tensor:
    M, K = a.shape
    N = q_w.shape[0]
    for name, t in (("q_w", q_w), ("s_w", s_w), ("s_x", s_a)):
        check(t.device == a.device, f"{name} is on {t.device}, the activations on {a.device}")
    if M == 0 or N == 0:  # nothing to compute: no launch (a grid of size 0 is an error)
        return out
    if K == 0:
        return out.zero_()
    p = pick(LAUNCH, M, launch)
    grid = (triton.cdiv(M, p["block_m"]), triton.cdiv(N, p["block_n"]))
    _int8_matmul_kernel[grid](
        a, q_w, s_a, s_w.float().contiguous(), out, M, N, K,
        a.stride(0), a.stride(1), q_w.stride(0), q_w.stride(1), out.stride(0), out.stride(1),
        QUANTIZE_A=quantize_a, QMAX=_QMAX[q_w.dtype], BLOCK_M=p["block_m"], BLOCK_N=p["block_n"],
        BLOCK_K=p["block_k"], num_warps=p["num_warps"], num_stages=p["num_stages"],
        enable_fp_fusion=False,  # no FMA contraction: rounding ties and the epilogue match the reference
    )
    return out


def int8_matmul(
    q_x: torch.Tensor, q_w: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, out_dtype=torch.float16,
    launch: dict | None = None,
) -> torch.Tensor:
    """Triton version of :func:`int8_matmul_ref`: ``(M, K)`` and ``(N, K)`` codes -> ``(M, N) out_dtype``.

    The codes are int8, or fp8 e4m3 (both of the same type); :func:`fp8_matmul` is the same call.
    """
    check(q_x.dtype in _QMAX and q_x.ndim == 2,
           f"q_x must be 2-D int8 or float8_e4m3fn (M, K), got {q_x.dtype} {tuple(q_x.shape)}")
    _check_weight(q_w, s_w, q_x.shape[1])
    check(q_x.dtype == q_w.dtype, f"q_x is {q_x.dtype} but q_w is {q_w.dtype}")
    check(s_x.shape == (q_x.shape[0],) and s_x.is_floating_point(),
          f"s_x must have shape ({q_x.shape[0]},) and a float dtype, got {s_x.dtype} {tuple(s_x.shape)}")
    out = torch.empty((q_x.shape[0], q_w.shape[0]), dtype=out_dtype, device=q_x.device)
    return _launch(q_x, q_w, s_x.float().contiguous(), s_w, out, quantize_a=False, launch=launch)


fp8_matmul = int8_matmul


def w8a8_dynamic(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, launch: dict | None = None,
                 fused: bool = False) -> torch.Tensor:
    """Per-token quantization of ``x`` (M, K) float to ``q_w``'s type, then the matmul; output in ``x.dtype``.

    ``fused=False`` (default): :func:`quantize_per_token` once, then the matmul — two launches.
    ``fused=True``: one kernel that quantizes each activation tile as it loads it; every
    column block of the output then repeats the per-token max over all of K and the
    rounding, which on an H100 made it slower than two launches at every M measured
    (``benchmarks/results/kernels_h100.json``). Both give the same codes and scales.
    """
    check(x.ndim == 2, f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    check_operands(x, q_w, s_w)
    out = torch.empty((x.shape[0], q_w.shape[0]), dtype=x.dtype, device=x.device)
    if not fused:
        q_x, s_x = quantize_per_token(x.contiguous(), q_w.dtype)
        return _launch(q_x, q_w, s_x, s_w, out, quantize_a=False, launch=launch)
    dummy = torch.empty(1, dtype=torch.float32, device=x.device)
    return _launch(x, q_w, dummy, s_w, out, quantize_a=True, launch=launch)
