"""GGUF (llama.cpp) block formats: encoders and decoders, byte-identical with llama.cpp."""
from .kquants import (
    KQUANT_TYPES,
    QK_K,
    dequantize_kquant,
    kquant_type_size,
    pack_scales_k4,
    quantize_kquant,
    unpack_scales_k4,
)
from .legacy import LEGACY_TYPES, QK, dequantize_blocks, quantize_blocks, type_size

__all__ = [
    "KQUANT_TYPES", "QK_K", "dequantize_kquant", "kquant_type_size", "pack_scales_k4", "quantize_kquant",
    "unpack_scales_k4", "LEGACY_TYPES", "QK", "dequantize_blocks", "quantize_blocks", "type_size",
]
from .file_types import FILE_TYPES, choose_tensor_type
from .io import (
    GGUFFormatError,
    dequantize_tensor,
    dequantized_like_gguf,
    gguf_tensors_from_hf,
    quantize_tensor,
    read_gguf,
    write_gguf,
)

__all__ += ["FILE_TYPES", "choose_tensor_type", "GGUFFormatError", "dequantize_tensor", "dequantized_like_gguf",
            "gguf_tensors_from_hf", "quantize_tensor", "read_gguf", "write_gguf"]
from .imatrix import Imatrix, compute_imatrix, read_imatrix, write_imatrix
from .weighted import WEIGHTED_TYPES, quantize_weighted

__all__ += ["Imatrix", "compute_imatrix", "read_imatrix", "write_imatrix", "WEIGHTED_TYPES", "quantize_weighted"]
