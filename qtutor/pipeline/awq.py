"""AWQ over a whole model, block by block (the reference's ``run_awq`` + ``pseudo_quantize_model_weight``).

For every block of a Llama-family model (mit-han-lab/llm-awq,
``auto_scale.py: auto_scale_block`` and ``auto_clip.py: auto_clip_block``):

1. collect the inputs of all its linears and the float block's outputs (the next inputs);
2. search scales for (input_layernorm → q, k, v) judged on the attention output,
   (v → o) when their shapes allow it (not with grouped-query attention),
   (post_attention_layernorm → gate, up) judged on the MLP output, and (up → down);
3. fold every scale into the preceding norm or linear (the float model is unchanged);
4. search and apply the clipping of every linear except q and k, on the rescaled inputs;
5. round every weight to the grid (``rtn_grid_quantize``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# AWQConfig lives in qtutor.methods.awq (qtutor.config imports it from there); re-exported here
from ..methods.awq import AWQConfig, apply_clip, check_activations, fold_scales_into_norm, search_clip, search_scales
from ..primitives.grid import QuantizedWeight, rtn_grid_quantize
from .sequential import (
    LLAMA_SEQUENTIAL_GROUPS, BlockInputs, BlockSource, BlockTransaction, InMemoryBlocks, block_progress,
    capture_block_inputs, check_hidden, collect_linear_inputs, run_block,
)

__all__ = ["AWQConfig", "awq_quantize_model", "awq_search_and_fold", "fold_scales_into_linear"]


@torch.no_grad()
def fold_scales_into_linear(prev: nn.Linear, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """``prev``'s last ``len(s)`` output rows ``/= s``, each following ``W[:, j] *= s_j`` (the reference's ``scale_fc_fc``)."""
    prev.weight[-scales.numel():].div_(scales.view(-1, 1).to(prev.weight.dtype))
    if prev.bias is not None:
        prev.bias.div_(scales.to(prev.bias.dtype))
    for lin in linears:
        lin.weight.mul_(scales.view(1, -1).to(lin.weight.dtype))


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` applied to ``batch_size`` samples at a time, to bound the activation memory of the search."""
    def run(x: torch.Tensor) -> torch.Tensor:
        outs = [fn(xb) for xb in x.split(batch_size)]
        return torch.cat([o[0] if isinstance(o, tuple) else o for o in outs])
    return run


@torch.no_grad()
def awq_search_and_fold(block: nn.Module, inputs: BlockInputs, config: AWQConfig,
                        prefix: str = "block") -> dict[str, float]:
    """Search, fold and clip one block in place; returns the chosen α per scaled group.

    Every layer's input activations are checked (finite, non-empty) before anything
    changes, and the searches change nothing: the block is only written once all of
    them have succeeded. ``prefix`` names the block in errors (``model.layers.5``).
    """
    names = sum(LLAMA_SEQUENTIAL_GROUPS, ())
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    collect_linear_inputs(block, inputs, names, lambda n, x: feats[n].append(x))
    x = {n: torch.cat(v) for n, v in feats.items()}  # (n_samples, seq_len, in_features)
    del feats
    for n in names:
        check_activations(x[n], f"{prefix}.{n}")
    attn, mlp = block.self_attn, block.mlp
    gs = config.group_size  # None: one group per row
    search = dict(n_bits=config.n_bits, group_size=gs, n_grid=config.n_grid)
    attn_fn = _batched(lambda h: attn(hidden_states=h, **inputs.kwargs), inputs.batch_size)
    plan = [  # (prev op, layers, their input, module judged)
        (block.input_layernorm, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], attn_fn),
        (attn.v_proj, ["self_attn.o_proj"], None),
        (block.post_attention_layernorm, ["mlp.gate_proj", "mlp.up_proj"], _batched(mlp, inputs.batch_size)),
        (mlp.up_proj, ["mlp.down_proj"], None),
    ]
    found = []
    for prev, layer_names, module in plan:
        layers = [block.get_submodule(n) for n in layer_names]
        if prev is attn.v_proj and attn.v_proj.weight.shape != attn.o_proj.weight.shape:
            continue  # as the reference: v -> o only without grouped-query attention
        s, ratio, _ = search_scales(module or layers[0], layers, x[layer_names[0]], **search)
        found.append((prev, layers, layer_names, s, ratio))
    alphas = {}
    for prev, layers, layer_names, s, ratio in found:  # the reference searches all, then applies
        fold = fold_scales_into_norm if not isinstance(prev, nn.Linear) else fold_scales_into_linear
        fold(prev, layers, s)
        for n in layer_names:
            x[n] = x[n] / s.to(x[n].dtype)
        alphas[layer_names[0]] = ratio
    if config.clip:
        for n in names:
            if n in ("self_attn.q_proj", "self_attn.k_proj"):
                continue  # the reference does not clip q and k: their errors are amplified by softmax
            lin = block.get_submodule(n)
            apply_clip(lin, search_clip(lin.weight, x[n], config.n_bits, gs), gs)
    return alphas


@torch.no_grad()
def awq_quantize_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    config: AWQConfig = AWQConfig(),
    device: torch.device | str | None = None,
    batch_size: int = 8,
    blocks: BlockSource | None = None,
    progress: bool = True,
) -> tuple[dict[str, QuantizedWeight], dict[str, float]]:
    """Quantize every decoder linear of ``model`` in place with AWQ.

    Returns ``({name: QuantizedWeight}, {group name: chosen α})``. As in the
    reference the next block's inputs come from the float block; the model's
    norms and linears are left scaled, so the saved weights and the in-place
    dequantized weights describe the same model.
    """
    if not isinstance(config, AWQConfig):
        raise ValueError(f"config must be an AWQConfig, got {type(config).__name__}")
    device = torch.device(device) if device is not None else model.model.embed_tokens.weight.device
    source = blocks if blocks is not None else InMemoryBlocks(model, device)
    results: dict[str, QuantizedWeight] = {}
    alphas: dict[str, float] = {}
    with BlockTransaction(source) as tx:  # checks every block's weights first; restores them all on error
        inputs = capture_block_inputs(model, input_ids, device, model.model.embed_tokens.weight.dtype, batch_size)
        for i in block_progress(len(source), "AWQ", progress):
            block = tx.load(i)
            next_hidden = run_block(block, inputs)
            check_hidden(next_hidden, f"the outputs of model.layers.{i} (the inputs of the next block)")
            for n, a in awq_search_and_fold(block, inputs, config, f"model.layers.{i}").items():
                alphas[f"model.layers.{i}.{n}"] = a
            for n in sum(LLAMA_SEQUENTIAL_GROUPS, ()):
                weight = block.get_submodule(n).weight
                qw = rtn_grid_quantize(weight, config.n_bits, config.group_size)
                weight.copy_(qw.dequantize(weight.dtype))
                results[f"model.layers.{i}.{n}"] = qw.to("cpu")
            inputs.hidden = next_hidden
            tx.release(i, block)
    return results, alphas
