"""GPTQ over several processes with ``torch.distributed`` (NCCL on GPUs, gloo on CPUs), equal to one process.

The work of :func:`qtutor.pipeline.gptq.gptq_quantize_model` is spread as the scale-out schemes of the GPTQ
and AWQ reference code's successors do, with PyTorch's own collectives and nothing home-made:

* **calibration batches are split across ranks** — global batch ``b`` (``batch_size`` samples) belongs to rank
  ``b mod W``, and only its owner runs the blocks on it;
* **Hessians are reduced in a fixed order** — for every layer the owner of batch ``b`` computes that batch's
  term ``(√(2/n_b)·X_b)ᵀ(√(2/n_b)·X_b)`` (``n_b`` the tokens of batches 0 … b), broadcasts it, and every rank
  applies ``H ← H·n_{b−1}/n_b + term`` for b = 0, 1, … — the operations of one process's running mean, in its
  order, so H is the same bit for bit (a sum-all-reduce would be faster but add in another order);
* **the layers of a group are quantized in parallel** — layer ``j`` of a sequential group on rank ``j mod W`` —
  and each result is broadcast, so every rank holds the same quantized block before the next inputs are
  computed.

Every rank must call with the same model and the same ``input_ids``. With the same kernels on every rank (the
same thread count on CPUs) the result equals the single-process result exactly (tests/pipeline/
test_distributed.py, two gloo processes on SmolLM2's first blocks).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from ..methods.gptq import GPTQ, GPTQConfig, check_activations
from ..primitives.grid import QuantizedWeight
from .sequential import (LLAMA_SEQUENTIAL_GROUPS, BlockTransaction, InMemoryBlocks, capture_block_inputs, check_hidden,
                         collect_linear_inputs, run_block)

__all__ = ["gptq_quantize_model_distributed"]


@torch.no_grad()
def gptq_quantize_model_distributed(model: nn.Module, input_ids: torch.Tensor, config: GPTQConfig = GPTQConfig(),
                                    batch_size: int = 8, true_sequential: bool = True,
                                    first_blocks: int | None = None, group=None) -> dict[str, QuantizedWeight]:
    """GPTQ of ``model`` in place on every rank of ``group`` (default: the world); returns ``{name: QuantizedWeight}``.

    ``first_blocks`` quantizes only the first blocks (a test or a partial run). ``input_ids`` must hold at least
    one ``batch_size`` batch per rank. ``torch.distributed`` must be initialised.

    An error on one rank (bad activations, say) restores that rank's blocks and raises there; the other ranks
    wait in their next collective until the launcher (``torch.multiprocessing.spawn``, torchrun) stops them or
    the process group times out — run every rank under one of the launchers, as ``qtutor quantize --nproc`` does.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: start with torchrun or `qtutor quantize --nproc N`, "
                           "or call torch.distributed.init_process_group first")
    if not isinstance(config, GPTQConfig):
        raise ValueError(f"config must be a GPTQConfig, got {type(config).__name__}")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (n_samples, seq_len), got shape {tuple(input_ids.shape)}")
    n_batches = math.ceil(input_ids.shape[0] / batch_size)
    if n_batches < world:
        raise ValueError(f"input_ids has {input_ids.shape[0]} samples = {n_batches} batches of {batch_size}, fewer than "
                         f"the {world} ranks: every rank needs at least one batch")
    device = model.model.embed_tokens.weight.device
    source = InMemoryBlocks(model, device)
    n_blocks = len(source.blocks)
    if first_blocks is not None:
        if isinstance(first_blocks, bool) or not isinstance(first_blocks, int) or not 1 <= first_blocks <= n_blocks:
            raise ValueError(f"first_blocks={first_blocks!r}: must be None (all) or an integer from 1 to {n_blocks}")
        source.blocks = source.blocks[:first_blocks]
    seq_len = input_ids.shape[1]
    sizes = [min(batch_size, input_ids.shape[0] - b * batch_size) for b in range(n_batches)]
    tokens = [s * seq_len for s in sizes]
    cumulative = [sum(tokens[: b + 1]) for b in range(n_batches)]
    mine = list(range(rank, n_batches, world))
    local_ids = torch.cat([input_ids[b * batch_size: b * batch_size + sizes[b]] for b in mine])
    groups = LLAMA_SEQUENTIAL_GROUPS if true_sequential else (sum(LLAMA_SEQUENTIAL_GROUPS, ()),)
    comm_device = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    results: dict[str, QuantizedWeight] = {}
    with BlockTransaction(source) as tx:
        inputs = capture_block_inputs(model, local_ids, device, model.model.embed_tokens.weight.dtype, batch_size)
        for i in range(len(source)):
            block = tx.load(i)
            for names in groups:
                terms: dict[str, list[torch.Tensor]] = {n: [] for n in names}

                def on_input(n: str, x: torch.Tensor) -> None:
                    full = f"model.layers.{i}.{n}"
                    check_activations(x, full)
                    if not bool(torch.isfinite(x).all()):
                        raise ValueError(f"{full}: the calibration activations hold NaN or Inf (rank {rank})")
                    b = mine[len(terms[n])]
                    x = math.sqrt(2 / cumulative[b]) * x.reshape(-1, x.shape[-1]).float()
                    terms[n].append(x.T @ x)

                collect_linear_inputs(block, inputs, names, on_input)
                layers = {}
                for n in names:
                    gptq = GPTQ(block.get_submodule(n).weight, f"model.layers.{i}.{n}")
                    for b in range(n_batches):  # one process's running mean, in its order
                        term = terms[n][mine.index(b)] if b % world == rank else torch.empty_like(gptq.H)
                        term = term.to(comm_device)
                        dist.broadcast(term, src=_global(group, b % world), group=group)
                        gptq.H *= gptq.nsamples / (gptq.nsamples + tokens[b])
                        gptq.nsamples += tokens[b]
                        gptq.H += term.to(gptq.H.device)
                    layers[n] = gptq
                del terms
                for j, n in enumerate(names):
                    owner = j % world
                    box = [layers[n].quantize(config).to("cpu") if owner == rank else None]
                    dist.broadcast_object_list(box, src=_global(group, owner), group=group,
                                               device=comm_device if comm_device.type == "cuda" else None)
                    qw = box[0]
                    weight = block.get_submodule(n).weight
                    weight.copy_(qw.dequantize(weight.dtype).to(weight.device))
                    results[f"model.layers.{i}.{n}"] = qw
                del layers
            inputs.hidden = run_block(block, inputs)
            check_hidden(inputs.hidden, f"the outputs of model.layers.{i} (the inputs of the next block)")
            tx.release(i, block)
    return results


def _global(group, group_rank: int) -> int:
    """The global rank of ``group_rank`` in ``group`` (the same number for the default group)."""
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def course_model_worker(rank: int, world: int, init_file: str, out: str, calibration: dict, settings: dict,
                        threads: int = 1) -> None:
    """One rank of a spawned run on the course model (CPU, gloo): quantize, then save ``{out}.{rank}``.

    ``calibration``: keyword arguments of :func:`qtutor.data.calibration_samples`; ``settings``: of
    :func:`gptq_quantize_model_distributed`. The file holds each layer's ``QuantizedWeight`` fields and every
    linear's weight after the run, for comparing ranks with each other and with one process. Importable, so that
    ``torch.multiprocessing.spawn`` can start it.
    """
    from ..data import calibration_samples
    from ..model import load_model

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tok = load_model()
        results = gptq_quantize_model_distributed(model, calibration_samples(tok, **calibration), **settings)
        weights = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        torch.save({"results": {n: vars(qw) for n, qw in results.items()}, "weights": weights}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()
