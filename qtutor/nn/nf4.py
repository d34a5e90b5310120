"""``NF4Linear``: inference-only linear layer with an NF4/FP4 weight in bitsandbytes' layout (``Linear4bit``).

The math (levels, blockwise absmax, double quantization, packing) lives in
:mod:`qtutor.methods.nf4`; this module only holds the buffers. By the rule of
:mod:`qtutor.nn._dispatch`, fp16/bf16 inputs on a GPU (or ``use_kernel=True``, e.g.
in Triton's interpreter) run :func:`qtutor.kernels.nf4.nf4_matmul`; otherwise the
weight is dequantized and multiplied in PyTorch. float32 inputs take the PyTorch path
(the kernel takes them too, through ``nf4_linear(..., kernel=True)``); any other dtype is
refused on both paths with the kernel's ``ValueError``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..methods.nf4 import NF4Config, NF4State, _levels, dynamic_map, nf4_linear, quantize_4bit
from ._dispatch import use_kernel

__all__ = ["NF4Linear"]


class NF4Linear(nn.Module):
    """``y = x Ŵᵀ + b`` with ``Ŵ`` stored as 4-bit NF4/FP4 codes and (double-quantized) block absmaxes."""

    def __init__(self, state: NF4State, bias: torch.Tensor | None = None, use_kernel: bool | None = None) -> None:
        super().__init__()
        if len(state.shape) != 2:
            raise ValueError(f"NF4Linear needs a 2-D (out, in) weight, got shape {tuple(state.shape)}")
        self.out_features, self.in_features = state.shape
        n = self.out_features * self.in_features
        if state.packed.dtype != torch.uint8 or state.packed.shape != ((n + 1) // 2, 1):
            raise ValueError(f"packed must be uint8 ({(n + 1) // 2}, 1) for a {tuple(state.shape)} weight, "
                             f"got {state.packed.dtype} {tuple(state.packed.shape)}")
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.config, self.dtype, self.use_kernel = state.config, state.dtype, use_kernel
        self.register_buffer("packed", state.packed)
        self.register_buffer("absmax", state.absmax)
        self.register_buffer("offset", state.offset if state.offset is not None else torch.zeros(()))
        self.register_buffer("absmax2", state.absmax2 if state.absmax2 is not None else torch.zeros(0))
        self.register_buffer("levels", _levels(state.config.quant_type))
        self.register_buffer("absmax_code", dynamic_map())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_tensors(cls, packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype,
                     config: NF4Config = NF4Config(), offset: torch.Tensor | None = None,
                     absmax2: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     use_kernel: bool | None = None) -> "NF4Linear":
        """From stored tensors (bitsandbytes' ``weight`` bytes and its quant state's ``absmax``, ``offset``,
        ``nested_absmax``) without requantizing."""
        return cls(NF4State(packed, torch.Size(shape), dtype, config, absmax, offset, absmax2), bias, use_kernel)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: NF4Config = NF4Config(),
                    use_kernel: bool | None = None) -> "NF4Linear":
        """Quantize ``linear``'s weight as bitsandbytes' ``quantize_4bit`` does."""
        # bitsandbytes' reference quantizer runs on the CPU; the layer goes back where the weight was
        bias = None if linear.bias is None else linear.bias.detach().cpu()
        return cls(quantize_4bit(linear.weight.detach().cpu(), config), bias, use_kernel).to(linear.weight.device)

    def state(self) -> NF4State:
        """The quantized weight as an :class:`NF4State` on the CPU (where :func:`dequantize_4bit` runs)."""
        dq = self.config.double_quant
        return NF4State(self.packed.cpu(), torch.Size((self.out_features, self.in_features)), self.dtype,
                        self.config, self.absmax.cpu(), self.offset.cpu() if dq else None,
                        self.absmax2.cpu() if dq else None)

    def _device_state(self) -> NF4State:
        dq = self.config.double_quant
        return NF4State(self.packed, torch.Size((self.out_features, self.in_features)), self.dtype, self.config,
                        self.absmax, self.offset if dq else None, self.absmax2 if dq else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nf4_linear(x, self._device_state(), self.bias, use_kernel(x, force=self.use_kernel), self.levels, self.absmax_code)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"quant_type={self.config.quant_type.value}, blocksize={self.config.blocksize}")
