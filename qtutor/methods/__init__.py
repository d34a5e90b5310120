"""Quantization methods, one module per paper: rtn, w8a8, smoothquant, llm_int8, nf4, gptq, awq."""
from .rtn import rtn_quantize_fn

__all__ = ["rtn_quantize_fn"]
