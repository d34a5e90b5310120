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
from .capture import UNIQUE_INPUTS, OutlierStats, observe_linear_inputs
from .walk import decoder_blocks, decoder_linears, fake_quantized, fake_quantized_inputs, replaced_linears

__all__ = [
    "GGUF_NAME", "MODEL_WHEEL", "ModelNotAvailableError", "build_cache", "cache_dir",
    "cache_state", "gguf_source_path", "load_model", "model_cache_path",
    "decoder_blocks", "decoder_linears", "fake_quantized", "fake_quantized_inputs", "replaced_linears",
    "UNIQUE_INPUTS", "OutlierStats", "observe_linear_inputs",
]
