"""KV-cache quantization: memory math, KIVI and FP8 primitives, quantized ``Cache`` layers for ``generate()``, and
the measurements of notebook 15 (key/value statistics, perplexity by context position, greedy agreement).

The decode-attention kernel over the same layout is ``qtutor.kernels.kv_decode``.
"""
from .cache import KV_SETTINGS, FP8Layer, KIVILayer, cache_nbytes, quantized_cache
from .memory import FP16, KVFormat, ModelShape, MODEL_SHAPES, cache_bytes, crossover_context, kv_bytes_per_token, \
    weight_bytes
from .quant import FP8_E4M3_MAX, dequantize_keys, dequantize_values, fp8_decode, fp8_encode, pack_codes, \
    quantize_keys, quantize_values, unpack_codes
from .stats import channel_outlier_ratio, greedy_agreement, grouping_error, kv_states, kv_stats, nll_by_context, \
    position_nll

__all__ = ["FP16", "KVFormat", "ModelShape", "MODEL_SHAPES", "cache_bytes", "crossover_context", "kv_bytes_per_token",
           "weight_bytes", "KV_SETTINGS", "FP8Layer", "KIVILayer", "cache_nbytes", "quantized_cache",
           "FP8_E4M3_MAX", "dequantize_keys", "dequantize_values", "fp8_decode", "fp8_encode", "pack_codes",
           "quantize_keys", "quantize_values", "unpack_codes", "channel_outlier_ratio", "greedy_agreement",
           "grouping_error", "kv_states", "kv_stats", "nll_by_context", "position_nll"]
