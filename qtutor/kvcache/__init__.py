"""KV-cache quantization: memory math (more to come: a quantized ``Cache`` for ``generate()`` and a decode kernel)."""
from .memory import FP16, KVFormat, ModelShape, MODEL_SHAPES, cache_bytes, crossover_context, kv_bytes_per_token, \
    weight_bytes

__all__ = ["FP16", "KVFormat", "ModelShape", "MODEL_SHAPES", "cache_bytes", "crossover_context", "kv_bytes_per_token",
           "weight_bytes"]
