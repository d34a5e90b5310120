"""W8A8 in FP8: e4m3 weights (one scale per output channel) times e4m3 activations (one scale per token).

Micikevicius et al., "FP8 Formats for Deep Learning" (2022): e4m3 has 4 exponent
and 3 mantissa bits, no infinities, and a largest finite value of 448. Each row
``v`` (an output channel of ``W``, or a token of ``X``) is scaled by
``s = max|v| / 448`` and cast: ``q = fp8(v / s)`` rounds to the nearest e4m3
value (ties to even). Then

    y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] · q_w[n, k]

Unlike int8, the codes are floats: the rounding step grows with the magnitude
(3 mantissa bits), so large and small values keep the same relative precision.
On a GPU with fp8 tensor cores (compute capability ≥ 8.9) the product runs in
``torch._scaled_mm``; elsewhere the codes are multiplied as float32 (the
reference, which any device runs).
"""
from __future__ import annotations

import torch

__all__ = ["FP8", "FP8_MAX", "quantize_fp8", "quantize_rows_fp8", "fp8_matmul_ref", "fp8_linear"]

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# below about 448 / 3.4e38 = 1.3e-36 the quotient 448 / max overflows float32 (to inf, and 0 · inf = NaN);
# a row whose maximum is smaller is scaled as if its maximum were 2⁻¹¹⁹ (1.5e-36): a scale a little too large
# for it (fewer levels used), never a NaN code
_MIN_AMAX = 2.0**-119


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows, K) float -> e4m3 codes (rows, K) and scales (rows,) float32, one absmax scale per row.

    The arithmetic of :func:`qtutor.kernels.w8a8.quantize_per_token_ref` with ``FP8`` (``x · (448 / max|x|)``,
    the quotient correctly rounded; the same codes and scales, tested): a row whose maximum is below 2⁻¹¹⁹
    is scaled as if it were 2⁻¹¹⁹, since ``448 / max`` would overflow and turn its zeros into NaN. FP8's
    own copy: the FP8 layers import no kernel module. No check of ``x`` (run per forward).
    """
    xf = x.float()
    amax = xf.abs().amax(dim=1)  # (rows,)
    amax = torch.where(amax > 0, amax.clamp(min=_MIN_AMAX), amax)
    inv = torch.where(amax > 0, torch.full_like(amax, FP8_MAX) / amax, torch.zeros_like(amax))
    q = (xf * inv[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)  # the cast rounds to nearest, ties to even
    return q, amax / torch.full_like(amax, FP8_MAX)


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (rows, K) float -> codes (rows, K) ``float8_e4m3fn`` and scales (rows,) float32, ``w ≈ q · s``."""
    if w.ndim != 2 or not w.is_floating_point():
        raise ValueError(f"w must be a 2-D float tensor (rows, K), got {w.dtype} {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or Inf: its fp8 scale would be NaN")
    return quantize_rows_fp8(w)


def fp8_matmul_ref(q_x: torch.Tensor, s_x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """(M, K) @ (N, K)ᵀ e4m3 codes multiplied in float32, times ``s_x[:, None] · s_w[None, :]``; (M, N) float32."""
    return (q_x.float() @ q_w.float().T) * s_x.float()[:, None] * s_w.float()[None, :]


def fp8_linear(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None,
               scaled_mm: bool = False) -> torch.Tensor:
    """``x`` (..., K) float through the e4m3 weight ``q_w`` (N, K) with scales ``s_w`` (N,); (..., N) in ``x.dtype``.

    Activations are quantized per token at run time. ``scaled_mm=True`` multiplies with
    ``torch._scaled_mm`` (CUDA, compute capability ≥ 8.9, K and N multiples of 16); otherwise
    :func:`fp8_matmul_ref`.
    """
    x2 = x.reshape(-1, x.shape[-1])  # (tokens, K)
    q_x, s_x = quantize_rows_fp8(x2)  # (tokens, K) e4m3, (tokens,)
    if scaled_mm:
        # row-wise scales need a bf16 output in torch._scaled_mm; the second operand column-major
        y = torch._scaled_mm(q_x, q_w.T, scale_a=s_x.view(-1, 1), scale_b=s_w.float().view(1, -1),
                             out_dtype=torch.bfloat16)
    else:
        y = fp8_matmul_ref(q_x, s_x, q_w, s_w)  # (tokens, N) float32
    y = y.to(x.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], q_w.shape[0])
