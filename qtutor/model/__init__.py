"""The model pipeline: loading the real model, walking and quantizing its layers."""
from .loading import (
    GGUF_NAME,
    MODEL_WHEEL,
    ModelNotAvailableError,
    build_cache,
    cache_dir,
    cache_state,
    gguf_source_path,
    load_model,
    model_cache_path,
)
from .walk import decoder_linears, fake_quantized, weight_snapshot

__all__ = [
    "GGUF_NAME", "MODEL_WHEEL", "ModelNotAvailableError", "build_cache", "cache_dir",
    "cache_state", "gguf_source_path", "load_model", "model_cache_path",
    "decoder_linears", "fake_quantized", "weight_snapshot",
]
