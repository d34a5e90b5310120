"""Primitives: pure functions over tensors (scales, codes, packing, error)."""
from .metrics import (
    bits_per_weight,
    error_report,
    max_abs_error,
    mse,
    n_qparams,
    relative_error,
    sqnr_db,
)
from .grid import QuantizedWeight, group_min_max, n_groups, rtn_grid_quantize
from .intmm import INT8_MM_BACKENDS, int8_mm, int8_mm_backend
from .packing import pack, packed_length, unpack
from .qparams import QParams, check_float_tensor, choose_qparams, dequantize, fake_quant, quantize
from .spec import (
    MAX_BITS,
    MIN_BITS,
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    ZeroPoint,
    check_group_size,
    check_n_bits_group_size,
)

__all__ = [
    "MAX_BITS", "MIN_BITS", "Granularity", "PerChannel", "PerGroup", "PerTensor", "PerToken",
    "QuantSpec", "ZeroPoint", "QParams", "check_float_tensor", "choose_qparams", "quantize",
    "dequantize", "fake_quant", "pack", "unpack", "packed_length", "mse", "sqnr_db",
    "max_abs_error", "relative_error", "error_report", "n_qparams", "bits_per_weight",
    "int8_mm", "int8_mm_backend", "INT8_MM_BACKENDS",
    "QuantizedWeight", "group_min_max", "n_groups", "rtn_grid_quantize", "check_n_bits_group_size",
    "check_group_size",
]
