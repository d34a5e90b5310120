"""``FP8Linear``: W8A8 in fp8 e4m3 — per-output-channel weight scales, per-token activation scales at run time.

The arithmetic lives in :mod:`qtutor.methods.fp8`. Its fast path is not Triton
but ``torch._scaled_mm`` on fp8 tensor cores: CUDA with compute capability ≥ 8.9
and K, N multiples of 16 (:func:`qtutor.nn._dispatch.use_scaled_mm`); anywhere
else the e4m3 codes are multiplied as float32.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import FP8Config
from ..methods.fp8 import FP8, fp8_linear, quantize_fp8
from ._dispatch import check_scaled_weight, use_scaled_mm

__all__ = ["FP8Linear"]


class FP8Linear(nn.Module):
    """``y = x Ŵᵀ + b`` with ``Ŵ = s_w · q_w``, ``q_w`` float8_e4m3fn (out, in), ``s_w`` float32 (out,)."""

    def __init__(self, q_weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        check_scaled_weight(q_weight, w_scale, bias, FP8, "float8_e4m3fn")
        self.out_features, self.in_features = q_weight.shape
        self.register_buffer("q_weight", q_weight)
        self.register_buffer("w_scale", w_scale.float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "FP8Linear":
        """From stored ``q_weight`` (e4m3 (out, in)), ``w_scale`` ((out,)) and optional ``bias``."""
        return cls(tensors["q_weight"], tensors["w_scale"], tensors.get("bias"))

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: FP8Config = FP8Config()) -> "FP8Linear":
        """Quantize ``linear``'s weight per output channel: ``max|w| → 448``, round to e4m3."""
        q, s = quantize_fp8(linear.weight.detach())
        return cls(q, s, linear.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``s_w · q_w`` (out, in) in ``dtype``."""
        return (self.q_weight.float() * self.w_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.q_weight, self.w_scale, self.bias, use_scaled_mm(x, self.in_features, self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=float8_e4m3fn"
