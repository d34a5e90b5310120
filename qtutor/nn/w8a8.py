"""``W8A8Linear``: int8 weights (per output channel) times int8 activations (per token, or one static scale).

The arithmetic lives in :mod:`qtutor.methods.w8a8`. By the rule of
:mod:`qtutor.nn._dispatch` a CUDA input (fp16, bf16 or fp32) runs the Triton
kernels of :mod:`qtutor.kernels.w8a8`; otherwise the same integer arithmetic runs
in PyTorch (exact int32 sums through :func:`qtutor.primitives.int8_mm`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..config import W8A8Config
from ..methods.w8a8 import ActQuant, quantize_weight_int8, w8a8_linear
from ._dispatch import check_scaled_weight, use_kernel

__all__ = ["W8A8Linear", "w8a8_factory"]

W8A8_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class W8A8Linear(nn.Module):
    """A linear layer holding int8 weights; activations quantized as ``act`` says."""

    def __init__(self, q_weight: torch.Tensor, w_scale: torch.Tensor, act: ActQuant = ActQuant(),
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        check_scaled_weight(q_weight, w_scale, bias, torch.int8, "int8")
        self.out_features, self.in_features = q_weight.shape
        self.register_buffer("q_weight", q_weight)
        self.register_buffer("w_scale", w_scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.act = act

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], act: ActQuant = ActQuant()) -> "W8A8Linear":
        """From stored ``q_weight`` (int8 (out, in)), ``w_scale`` (float (out,)) and optional ``bias``."""
        return cls(tensors["q_weight"], tensors["w_scale"], act, tensors.get("bias"))

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: ActQuant = ActQuant()) -> "W8A8Linear":
        """Quantize ``linear``'s weight per output channel (absmax to ±127)."""
        q, s = quantize_weight_int8(linear.weight.detach())
        return cls(q, s, act, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w8a8_linear(x, self.q_weight, self.w_scale, self.act, use_kernel(x, dtypes=W8A8_DTYPES), self.bias)

    def extra_repr(self) -> str:
        act = "dynamic per-token" if self.act.static_scale is None else f"static scale={self.act.static_scale:.3g}"
        return f"in_features={self.in_features}, out_features={self.out_features}, activations={act}"


def w8a8_factory(static_scales: Mapping[str, float] | W8A8Config | None = None) -> Callable[[str, nn.Linear], W8A8Linear]:
    """``make_module(name, linear)`` for :func:`qtutor.model.replaced_linears`.

    ``static_scales`` maps layer names to calibrated activation scales (static
    per-tensor); ``None`` gives dynamic per-token scales.
    """
    config = static_scales if isinstance(static_scales, W8A8Config) else W8A8Config(static_scales)

    def make_module(name: str, linear: nn.Linear) -> W8A8Linear:
        if config.static_scales is None:
            return W8A8Linear.from_linear(linear)
        if name not in config.static_scales:
            raise ValueError(f"no calibrated activation scale for {name}")
        return W8A8Linear.from_linear(linear, ActQuant(static_scale=config.static_scales[name]))

    return make_module
