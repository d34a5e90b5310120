"""The model pipeline: block-by-block calibration and quantization of a whole model with GPTQ or AWQ."""
from .awq import AWQConfig, awq_quantize_model
from .gptq import gptq_quantize_model
from .sequential import (
    LLAMA_SEQUENTIAL_GROUPS, BlockInputs, BlockSource, InMemoryBlocks, SafetensorsBlocks, capture_block_inputs,
    collect_linear_inputs, run_block,
)

__all__ = [
    "AWQConfig", "awq_quantize_model", "gptq_quantize_model", "LLAMA_SEQUENTIAL_GROUPS", "BlockInputs",
    "BlockSource", "InMemoryBlocks", "SafetensorsBlocks", "capture_block_inputs", "collect_linear_inputs", "run_block",
]
