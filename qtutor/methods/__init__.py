"""Quantization methods, one module per paper."""
from .rtn import rtn_quantize_fn

__all__ = ["rtn_quantize_fn"]
