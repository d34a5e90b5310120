"""Quantized ``nn.Module``s: one family of Linears, each with ``from_linear``, a constructor from stored
tensors and a one-line ``forward``; and :func:`convert`, which swaps a model's decoder linears for them.

* :class:`W4A16Linear`: b-bit grid weights (RTN, GPTQ, AWQ) packed in the GPTQ-v2 layout;
* :class:`NF4Linear`: NF4/FP4 (QLoRA), bitsandbytes' layout;
* :class:`Int8LinearLt`: LLM.int8() with fp16 outlier columns;
* :class:`W8A8Linear`: int8 weights and activations;
* :class:`FP8Linear`: fp8 e4m3 weights and activations.

When each runs its kernel and when PyTorch: :mod:`qtutor.nn._dispatch`.
"""
from ..config import (
    AWQConfig, FP8Config, GPTQConfig, LLMInt8Config, NF4Config, QuantConfig, RTNConfig, W8A8Config,
)
from ._dispatch import use_kernel, use_scaled_mm
from .convert import MODULES, convert
from .fp8 import FP8Linear
from .llm_int8 import Int8LinearLt
from .nf4 import NF4Linear
from .w4a16 import W4A16Linear
from .w8a8 import W8A8Linear, w8a8_factory

__all__ = [
    "W4A16Linear", "NF4Linear", "Int8LinearLt", "W8A8Linear", "FP8Linear", "w8a8_factory", "convert", "MODULES",
    "use_kernel", "use_scaled_mm", "RTNConfig", "GPTQConfig", "AWQConfig", "NF4Config", "LLMInt8Config",
    "W8A8Config", "FP8Config", "QuantConfig",
]
