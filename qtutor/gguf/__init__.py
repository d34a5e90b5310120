"""GGUF block formats (llama.cpp), encoders and decoders."""
from .legacy import LEGACY_TYPES, QK, dequantize_blocks, quantize_blocks, type_size

__all__ = ["LEGACY_TYPES", "QK", "dequantize_blocks", "quantize_blocks", "type_size"]
