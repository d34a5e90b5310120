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
    LLAMA_SEQUENTIAL_GROUPS, BlockSource, BlockTransaction, InMemoryBlocks, block_progress, capture_block_inputs,
    check_hidden, collect_linear_inputs, run_block,
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

    Transactional: the ids and every block's weights are checked before any block
    changes; an error later (activations that overflow in block 5) restores every
    block already quantized, so the model is exactly as it was, and names the layer
    and whether its weights or its input activations are to blame.
    """
    if not isinstance(config, GPTQConfig):
        raise ValueError(f"config must be a GPTQConfig, got {type(config).__name__}")
    device = torch.device(device) if device is not None else model.model.embed_tokens.weight.device
    source = blocks if blocks is not None else InMemoryBlocks(model, device)
    groups = LLAMA_SEQUENTIAL_GROUPS if true_sequential else (sum(LLAMA_SEQUENTIAL_GROUPS, ()),)
    results: dict[str, QuantizedWeight] = {}
    with BlockTransaction(source) as tx:  # checks every block's weights first
        inputs = capture_block_inputs(model, input_ids, device, model.model.embed_tokens.weight.dtype, batch_size)
        for i in block_progress(len(source), "GPTQ", progress):
            block = tx.load(i)
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
            check_hidden(inputs.hidden, f"the outputs of model.layers.{i} (the inputs of the next block)")
            tx.release(i, block)
    return results
