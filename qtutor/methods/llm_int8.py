"""LLM.int8(): vector-wise int8 matmul with a 16-bit path for outlier features.

Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at
Scale" (NeurIPS 2022), §3.  For ``X`` (tokens, K) in fp16 and ``W`` (N, K):

1. outlier columns ``O = {k : ∃ t, |X[t, k]| ≥ threshold}`` (6.0 in the paper);
2. ``X`` without those columns is quantized per row (token), ``W`` per row
   (output channel), both absmax to [-127, 127];
3. ``Y = s_x s_wᵀ ⊙ (C_x C_wᵀ) / 127²  +  X[:, O] · dequant(C_w)[:, O]ᵀ`` (fp16).

This follows bitsandbytes' own implementation step by step
(``int8_vectorwise_quant``, ``int8_mm_dequant``, ``int8_mixed_scaled_mm`` in
bitsandbytes 0.50), so that :class:`qtutor.nn.Int8LinearLt` returns what
``bitsandbytes.nn.Linear8bitLt(has_fp16_weights=False, threshold=6.0)`` returns.
"""
from __future__ import annotations

import torch

from ..kernels.w8a8 import int8_matmul
from ..primitives.intmm import int8_mm

__all__ = ["vectorwise_quant", "outlier_columns", "llm_int8_matmul", "llm_int8_linear", "check_threshold"]

_INV_127 = 7.874015718698502e-3  # bitsandbytes' constants, kept to match it bit for bit
_INV_127_SQ = 6.200124e-05


def check_threshold(threshold: float) -> None:
    """A number ≥ 0 (0: no outlier path; ``inf``: no column is an outlier); NaN, negatives, bools refused.

    The kernel path's own check (:func:`qtutor.kernels.llm_int8.check_threshold`), so that the CPU
    and the kernel paths raise the same ``ValueError`` for the same threshold.
    """
    from ..kernels.llm_int8 import check_threshold as kernel_check

    kernel_check(threshold)


def check_operands(x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor) -> None:
    """``x`` (M, K) fp16, ``CB`` (N, K) int8, ``SCB`` (N,) float32: the kernel path's checks, on every path."""
    from ..kernels.llm_int8 import check_operands as kernel_check

    kernel_check(x, CB, SCB)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the columns of ``x`` (tokens, K) holding any ``|x| ≥ threshold``."""
    return torch.argwhere((x.abs() >= threshold).any(dim=0)).view(-1)


def vectorwise_quant(x: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise absmax int8 of ``x`` (rows, K) fp16, outliers excluded.

    Returns codes (rows, K) int8 with outlier columns zeroed, row absmax (rows,)
    float32, and the outlier column indices.
    """
    if x.dtype != torch.float16:
        raise ValueError(f"x has dtype {x.dtype}: LLM.int8() quantizes float16 inputs")
    check_threshold(threshold)
    cols = torch.empty(0, dtype=torch.long, device=x.device)
    a = x
    if threshold > 0.0:
        outliers = x.abs() >= threshold
        if outliers.any():
            cols = torch.argwhere(outliers.any(dim=0)).view(-1)
            a = x.masked_fill(outliers, 0)  # outliers must not set the row's scale
    row_stats = a.abs().max(dim=1).values.float()
    codes = torch.round(a * (127.0 / row_stats.unsqueeze(-1))).to(torch.int8)
    if x.shape[0] > 1 and cols.numel():
        codes[:, cols] = 0
    return codes, row_stats, cols


def llm_int8_matmul(
    x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float = 6.0, use_triton: bool | None = None
) -> torch.Tensor:
    """``x`` (tokens, K) fp16 times int8 weight ``CB`` (N, K) with row absmax ``SCB`` (N,); fp16 (tokens, N).

    ``use_triton``: None (default) runs :mod:`qtutor.kernels.llm_int8` (the whole decomposition in two
    kernels) on a GPU and bitsandbytes' steps in PyTorch on the CPU; True runs these steps with the
    int8 product in the Triton W8A8 kernel; False always runs them in PyTorch.
    """
    check_operands(x, CB, SCB)  # the CPU path validates as the kernel path does
    check_threshold(threshold)
    if use_triton is None and x.is_cuda:
        from ..kernels.llm_int8 import llm_int8_matmul as fused

        return fused(x.contiguous(), CB, SCB, threshold)
    CA, SCA, cols = vectorwise_quant(x, threshold)
    if use_triton:
        out = int8_matmul(CA, CB, SCA * _INV_127, SCB * _INV_127, out_dtype=torch.float16)
    else:
        acc = int8_mm(CA, CB.t())  # exact int32, as bitsandbytes' int8_linear_matmul
        out = (acc * (SCA.unsqueeze(-1) * SCB.unsqueeze(0)) * _INV_127_SQ).to(torch.float16)
    if cols.numel():
        sub_w = (CB[:, cols].contiguous() * SCB.view(-1, 1) * _INV_127).to(torch.float16).t()  # (|O|, N)
        out = out.addmm(x[:, cols].contiguous(), sub_w)
    return out


def llm_int8_linear(x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float = 6.0,
                    bias: torch.Tensor | None = None, use_triton: bool | None = None) -> torch.Tensor:
    """``x`` (..., K) of any float dtype through :func:`llm_int8_matmul` in fp16, plus ``bias``;
    (..., N) in ``x.dtype`` (what ``bitsandbytes.nn.Linear8bitLt`` computes)."""
    y = llm_int8_matmul(x.reshape(-1, x.shape[-1]).half(), CB, SCB, threshold, use_triton)  # (tokens, N) fp16
    return (y if bias is None else y + bias).reshape(*x.shape[:-1], -1).to(x.dtype)
