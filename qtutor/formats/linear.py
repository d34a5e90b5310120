"""``PackedLinear``: a linear layer whose weight is stored packed (GPTQ v2 layout) and used as W4A16.

The buffers are the GPTQ layout without v1's off-by-one (``qweight`` (in·b/32, out),
``qzeros`` (n_groups, out·b/32), ``scales`` (n_groups, out), ``g_idx`` (in,)), which
is also what ``qtutor.kernels.w4a16`` reads: on a GPU, 4-bit layers with fp16/bf16
inputs run that Triton kernel. On the CPU the weight is dequantized once and cached
(the course measures accuracy there, not speed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..primitives.grid import QuantizedWeight
from .layouts import pack_gptq, unpack_gptq

__all__ = ["PackedLinear"]


class PackedLinear(nn.Module):
    """``y = x Ŵᵀ + b`` with ``Ŵ = scale · (q − zero)`` held packed."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                 scale_dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.n_bits, self.group_size = qw.n_bits, qw.group_size
        packed = pack_gptq(qw, version=2)
        for name in ("qweight", "qzeros", "g_idx"):
            self.register_buffer(name, packed[name])
        self.register_buffer("scales", qw.scale.T.to(scale_dtype).contiguous())  # (n_groups, out)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._dense: torch.Tensor | None = None
        # what the kernel needs to know without inspecting g_idx: 0 = act-order (any group per row)
        self._kernel_group = 0 if qw.has_act_order else (qw.group_size or self.in_features)

    def quantized_weight(self) -> QuantizedWeight:
        qw = unpack_gptq({"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales,
                          "g_idx": self.g_idx}, self.n_bits, self.group_size, version=2)
        qw.scale = self.scales.float().T.contiguous()
        return qw

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self._dense is None or self._dense.dtype != dtype or self._dense.device != self.qweight.device:
            self._dense = self.quantized_weight().to(self.qweight.device).dequantize(dtype)
        return self._dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.n_bits == 4 and x.dtype in (torch.float16, torch.bfloat16):
            return self._kernel_forward(x)
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.w4a16 import w4a16_matmul

        y = w4a16_matmul(x.reshape(-1, self.in_features).contiguous(), self.qweight, self.qzeros, self.scales,
                         self.g_idx, group_size=self._kernel_group)  # (tokens, out)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_bits={self.n_bits}, group_size={self.group_size}"
