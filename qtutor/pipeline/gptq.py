"""GPTQ over a whole model, block by block (the reference's ``llama_sequential``).

For every block, in the true-sequential order of ``LLAMA_SEQUENTIAL_GROUPS``:
accumulate each layer's Hessian from its inputs — produced by the blocks and
layers already quantized — run ``qtutor.methods.gptq.GPTQ``, and write the
dequantized weight back; then run the quantized block to get the next inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..methods.gptq import GPTQ, GPTQConfig
from ..primitives.grid import QuantizedWeight
from .sequential import (
    LLAMA_SEQUENTIAL_GROUPS, BlockSource, InMemoryBlocks, block_progress, capture_block_inputs,
    collect_linear_inputs, run_block,
)

__all__ = ["gptq_quantize_model"]


@torch.no_grad()
def gptq_quantize_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    config: GPTQConfig = GPTQConfig(),
    device: torch.device | str | None = None,
    batch_size: int = 8,
    true_sequential: bool = True,
    blocks: BlockSource | None = None,
    progress: bool = True,
) -> dict[str, QuantizedWeight]:
    """Quantize every decoder linear of ``model`` in place with GPTQ; returns ``{name: QuantizedWeight}``.

    ``input_ids``: int64 (n_samples, seq_len) calibration windows. ``device``:
    where each block is quantized (defaults to the embedding's device).
    ``true_sequential=False`` collects all of a block's layers in one pass of
    the float block, as the reference without ``--true-sequential``.
    Embeddings, norms and the LM head are left in floating point.
    """
    device = torch.device(device) if device is not None else model.model.embed_tokens.weight.device
    source = blocks if blocks is not None else InMemoryBlocks(model, device)
    inputs = capture_block_inputs(model, input_ids, device, model.model.embed_tokens.weight.dtype, batch_size)
    groups = LLAMA_SEQUENTIAL_GROUPS if true_sequential else (sum(LLAMA_SEQUENTIAL_GROUPS, ()),)
    results: dict[str, QuantizedWeight] = {}
    for i in block_progress(len(source), "GPTQ", progress):
        block = source.load(i)
        for names in groups:
            layers = {n: GPTQ(block.get_submodule(n).weight, f"model.layers.{i}.{n}") for n in names}
            collect_linear_inputs(block, inputs, names, lambda n, x: layers[n].add_batch(x))
            for n, gptq in layers.items():
                qw = gptq.quantize(config)
                weight = block.get_submodule(n).weight
                weight.copy_(qw.dequantize(weight.dtype))
                results[f"model.layers.{i}.{n}"] = qw.to("cpu")
            del layers
        inputs.hidden = run_block(block, inputs)
        source.release(i, block)
    return results
