"""``Int8LinearLt``: inference-only LLM.int8() linear layer (as ``bitsandbytes.nn.Linear8bitLt``).

The weight is int8 per output row (``CB``, with row absmax ``SCB``); activations
are quantized per token at run time, with outlier columns (``|x| ≥ threshold``)
kept in fp16 (:mod:`qtutor.methods.llm_int8`). By the rule of
:mod:`qtutor.nn._dispatch` a CUDA input runs the fused kernels of
:mod:`qtutor.kernels.llm_int8` (any float input: the layer works in fp16);
otherwise bitsandbytes' steps run in PyTorch. ``use_triton=True`` runs those
steps with the int8 product in the Triton W8A8 kernel, ``False`` always PyTorch.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LLMInt8Config
from ..methods.llm_int8 import check_threshold, llm_int8_linear, vectorwise_quant
from ._dispatch import use_kernel

__all__ = ["Int8LinearLt"]


class Int8LinearLt(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` int8 per output row and LLM.int8()'s mixed-precision decomposition."""

    def __init__(self, CB: torch.Tensor, SCB: torch.Tensor, threshold: float = 6.0, bias: torch.Tensor | None = None,
                 use_triton: bool | None = None) -> None:
        super().__init__()
        check_threshold(threshold)
        if CB.dtype != torch.int8 or CB.ndim != 2:
            raise ValueError(f"CB must be 2-D int8 (out, in), got {CB.dtype} {tuple(CB.shape)}")
        if SCB.shape != (CB.shape[0],) or not SCB.is_floating_point():
            raise ValueError(f"SCB must be float ({CB.shape[0]},), got {SCB.dtype} {tuple(SCB.shape)}")
        if bias is not None and tuple(bias.shape) != (CB.shape[0],):
            raise ValueError(f"bias must have shape ({CB.shape[0]},), got {tuple(bias.shape)}")
        self.out_features, self.in_features = CB.shape
        self.register_buffer("CB", CB)
        self.register_buffer("SCB", SCB)
        self.bias = None if bias is None else nn.Parameter(bias.detach().half(), requires_grad=False)
        self.threshold, self.use_triton = threshold, use_triton

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], threshold: float = 6.0,
                     use_triton: bool | None = None) -> "Int8LinearLt":
        """From a checkpoint's ``CB`` (int8 (out, in)), ``SCB`` (float (out,)) and optional ``bias``, as stored."""
        return cls(tensors["CB"], tensors["SCB"], threshold, tensors.get("bias"), use_triton)

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float | LLMInt8Config = 6.0,
                    use_triton: bool | None = None) -> "Int8LinearLt":
        """Quantize ``linear``'s weight per row (absmax to ±127), as bitsandbytes does on ``.cuda()``."""
        if isinstance(threshold, LLMInt8Config):
            threshold = threshold.threshold
        CB, SCB, _ = vectorwise_quant(linear.weight.detach().half())
        return cls(CB, SCB, threshold, linear.bias, use_triton)

    def _mode(self, x: torch.Tensor) -> bool | None:
        """``use_triton`` for :func:`llm_int8_matmul`: None (fused kernels) where the rule says kernel."""
        if self.use_triton is not None:
            return self.use_triton
        return None if use_kernel(x, dtypes=None) else False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return llm_int8_linear(x, self.CB, self.SCB, self.threshold, self.bias, self._mode(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"
