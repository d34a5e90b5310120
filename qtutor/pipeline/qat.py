"""Block-wise quantization-aware training: each decoder block learns to match the float block's outputs.

The cheapest QAT that fits a CPU: instead of training the whole network on the language-modelling loss, train one
block at a time to reproduce the float block's output on calibration inputs (the block-reconstruction setting of
BRECQ, Li et al. ICLR 2021, and OmniQuant, Shao et al. ICLR 2024), through the straight-through estimator.
Each linear's weight ``W`` (trainable, float) is used as ``Q(W)``: symmetric ``n_bits`` codes with one learnable
LSQ scale per group of ``group_size`` input columns (:mod:`qtutor.methods.qat`). Blocks run in order; a block's
inputs are the outputs of the blocks before it *as already quantized*, and its target is the float block applied
to those same inputs, so each block also learns to correct what the earlier ones got wrong.

After training the weights are baked: ``W ← Q(W)`` (on the grid, so any RTN-format packer can store them).
:func:`qat_distill_` is the whole-model form (torchao's QAT recipe trains end to end; here on the float
teacher's distribution, KL(p_teacher ‖ p_student) per token, as LLM-QAT, Liu et al. 2023, does): every chosen
linear at once, for ``steps`` optimizer steps on batches of token windows — a GPU budget.

The model is changed in place; an error (bad input, activations that overflow, an interrupt) puts every block
back as it was.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.qat import fake_quant_ste
from ..model.walk import decoder_blocks
from ..progress import progress as progress_bar
from .sequential import _first, block_progress, capture_block_inputs, check_hidden, run_block

__all__ = ["QATConfig", "GroupLSQ", "qat_blockwise_", "qat_distill_", "rtn_group_", "lsq_quantized", "block_mse"]


@dataclass(frozen=True)
class QATConfig:
    n_bits: int = 3
    group_size: int = 64
    steps: int = 50  # optimizer steps per block
    lr: float = 1e-4  # weights (Adam)
    scale_lr: float = 1e-3  # LSQ scales (Adam)
    batch_size: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.n_bits, int) or not 2 <= self.n_bits <= 8:
            raise ValueError(f"n_bits={self.n_bits!r}: must be an integer from 2 to 8")
        for name in ("group_size", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: must be a positive integer")
        for name in ("lr", "scale_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r}: must be a positive finite number")


class GroupLSQ(nn.Module):
    """Symmetric fake quantization of a weight (out, in) with one learnable scale per group of input columns."""

    def __init__(self, weight: torch.Tensor, n_bits: int, group_size: int) -> None:
        super().__init__()
        out, k = weight.shape
        if k % group_size:
            raise ValueError(f"in_features={k} is not a multiple of group_size={group_size}")
        self.n_bits, self.group_size = n_bits, group_size
        self.q_max = 2 ** (n_bits - 1) - 1
        s = weight.detach().float().reshape(out, k // group_size, group_size).abs().amax(-1, keepdim=True) / self.q_max
        self.scale = nn.Parameter(torch.where(s > 0, s, torch.ones_like(s)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out, k = w.shape
        g = 1.0 / math.sqrt(self.group_size * self.q_max)
        q = fake_quant_ste(w.reshape(out, k // self.group_size, self.group_size), self.scale.clamp(min=1e-8),
                           self.n_bits, grad_scale=g)
        return q.reshape(out, k)


def _linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def _check(model: nn.Module, config: QATConfig, blocks: Sequence[int] | None) -> list[int]:
    if not isinstance(config, QATConfig):
        raise ValueError(f"config must be a QATConfig, got {type(config).__name__}")
    all_blocks = decoder_blocks(model)
    chosen = list(range(len(all_blocks))) if blocks is None else list(blocks)
    bad = [i for i in chosen if not isinstance(i, int) or not 0 <= i < len(all_blocks)]
    if bad or not chosen:
        raise ValueError(f"blocks={blocks!r}: must be indices in 0..{len(all_blocks) - 1}")
    for i in chosen:
        for n, lin in _linears(all_blocks[i]).items():
            if lin.in_features % config.group_size:
                raise ValueError(f"model.layers.{i}.{n}: in_features={lin.in_features} is not a multiple of "
                                 f"group_size={config.group_size}")
            if not bool(torch.isfinite(lin.weight).all()):
                raise ValueError(f"model.layers.{i}.{n} has NaN or Inf weights")
    return sorted(set(chosen))


@torch.no_grad()
def rtn_group_(model: nn.Module, n_bits: int, group_size: int, blocks: Sequence[int] | None = None) -> None:
    """The PTQ baseline QAT starts from: the same grid (absmax scale per group), rounded once, in place."""
    config = QATConfig(n_bits=n_bits, group_size=group_size)
    for i in _check(model, config, blocks):
        for lin in _linears(decoder_blocks(model)[i]).values():
            lin.weight.copy_(GroupLSQ(lin.weight, n_bits, group_size)(lin.weight))


def qat_blockwise_(model: nn.Module, input_ids: torch.Tensor, config: QATConfig = QATConfig(),
                   blocks: Sequence[int] | None = None, progress: bool = True, seed: int = 0) -> list[dict]:
    """Train the chosen blocks (default: all) one after another; the others are left float. Returns per block
    ``{'block', 'mse_rtn', 'mse_qat', 'loss_first', 'loss_last'}`` (MSE against the float block on the calibration
    inputs, before training = RTN on the same grid, and after)."""
    chosen = _check(model, config, blocks)
    torch.manual_seed(seed)
    all_blocks = decoder_blocks(model)
    device = model.model.embed_tokens.weight.device
    inputs = capture_block_inputs(model, input_ids, device, model.model.embed_tokens.weight.dtype, config.batch_size)
    report = []
    saved = {(i, n): m.weight.detach().clone() for i in chosen for n, m in _linears(all_blocks[i]).items()}
    try:
        for i in block_progress(max(chosen) + 1, "QAT", progress):
            block = all_blocks[i]
            if i in chosen:
                target = run_block(block, inputs)  # the float block on the (quantized-upstream) inputs
                report.append({"block": i, **_train_block(block, inputs, target, config)})
            inputs.hidden = run_block(block, inputs)
            check_hidden(inputs.hidden, f"the outputs of model.layers.{i}")
    except BaseException:
        with torch.no_grad():  # every block as it was: no half-trained model
            for (i, n), w in saved.items():
                all_blocks[i].get_submodule(n).weight.copy_(w)
        raise
    return report


@contextlib.contextmanager
def lsq_quantized(block: nn.Module, n_bits: int, group_size: int, bake: bool = False) -> Iterator[dict[str, GroupLSQ]]:
    """Within the block, every linear computes with ``Q(W)`` (a :class:`GroupLSQ` per linear, yielded by name).

    On exit the linears compute with their own weights again; ``bake=True`` first sets ``W ← Q(W)``.
    """
    lins = _linears(block)
    quantizers = {n: GroupLSQ(m.weight, n_bits, group_size).to(m.weight.device) for n, m in lins.items()}
    for n, m in lins.items():
        m.forward = (lambda mod, qq: (lambda x: F.linear(x, qq(mod.weight), mod.bias)))(m, quantizers[n])
    try:
        yield quantizers
    finally:
        with torch.no_grad():
            for n, m in lins.items():
                del m.forward  # the class's forward again
                if bake:
                    m.weight.copy_(quantizers[n](m.weight))


@torch.no_grad()
def block_mse(block: nn.Module, inputs, target: torch.Tensor) -> float:
    """Mean squared error of the block's outputs on ``inputs`` against ``target`` (all calibration samples)."""
    total = sum(F.mse_loss(_first(block(h, **inputs.kwargs)), t, reduction="sum")
                for h, t in zip(inputs.batches(), target.split(inputs.batch_size)))
    return float(total) / target.numel()


def _train_block(block: nn.Module, inputs, target: torch.Tensor, config: QATConfig) -> dict:
    lins = _linears(block)
    was = {id(p): p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    weights = [m.weight for m in lins.values()]
    n = inputs.hidden.shape[0]
    try:
        with lsq_quantized(block, config.n_bits, config.group_size, bake=True) as quantizers:
            for w in weights:
                w.requires_grad_(True)
            opt = torch.optim.Adam([{"params": weights, "lr": config.lr},
                                    {"params": [q.scale for q in quantizers.values()], "lr": config.scale_lr}])
            mse_rtn = block_mse(block, inputs, target)
            losses = []
            g = torch.Generator().manual_seed(0)
            for _ in range(config.steps):
                idx = torch.randperm(n, generator=g)[: config.batch_size].to(inputs.hidden.device)
                opt.zero_grad()
                loss = F.mse_loss(_first(block(inputs.hidden[idx], **inputs.kwargs)), target[idx])
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            mse_qat = block_mse(block, inputs, target)
    finally:
        for p in block.parameters():
            p.requires_grad_(was[id(p)])
    return {"mse_rtn": mse_rtn, "mse_qat": mse_qat, "loss_first": losses[0], "loss_last": losses[-1]}


def qat_distill_(model: nn.Module, teacher: nn.Module, input_ids: torch.Tensor, config: QATConfig = QATConfig(),
                 blocks: Sequence[int] | None = None, progress: bool = True, seed: int = 0,
                 log_every: int = 0) -> list[float]:
    """Whole-model QAT: the chosen blocks' linears (default: all) compute with ``Q(W)`` and train together, weights
    and LSQ scales, for ``config.steps`` Adam steps on random batches of ``config.batch_size`` rows of
    ``input_ids`` (n, seq), minimizing the mean KL(p_teacher ‖ p_model) per token against the float ``teacher``
    (same tokenizer, frozen). Norms, embeddings and the head stay frozen. At the end ``W ← Q(W)`` (on the grid).
    Returns the loss per step. An error leaves every weight as it was."""
    chosen = _check(model, config, blocks)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError("input_ids must be an int64 tensor (n_samples, seq_len)")
    if not isinstance(teacher, nn.Module) or teacher is model:
        raise ValueError("teacher must be a separate (float) model")
    all_blocks = decoder_blocks(model)
    lins = {(i, n): m for i in chosen for n, m in _linears(all_blocks[i]).items()}
    saved = {k: m.weight.detach().clone() for k, m in lins.items()}
    was = {id(p): p.requires_grad for p in model.parameters()}
    device = model.model.embed_tokens.weight.device
    ids = input_ids.to(device)
    g = torch.Generator().manual_seed(seed)
    history = []
    try:
        with contextlib.ExitStack() as stack:
            scales = []
            for i in chosen:
                scales += [q.scale for q in stack.enter_context(
                    lsq_quantized(all_blocks[i], config.n_bits, config.group_size, bake=True)).values()]
            for p in model.parameters():
                p.requires_grad_(False)
            weights = [m.weight for m in lins.values()]
            for w in weights:
                w.requires_grad_(True)
            opt = torch.optim.Adam([{"params": weights, "lr": config.lr}, {"params": scales, "lr": config.scale_lr}])
            for step in progress_bar(range(config.steps), "QAT steps", enabled=progress):
                idx = torch.randperm(ids.shape[0], generator=g)[: config.batch_size].to(device)
                batch = ids[idx]
                with torch.no_grad():
                    target = F.log_softmax(teacher(batch).logits.float(), dim=-1)
                logp = F.log_softmax(model(batch).logits.float(), dim=-1)
                loss = F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {step}: the distillation loss is {float(loss.detach())}: lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append(float(loss.detach()))
                if log_every and (step + 1) % log_every == 0:
                    print(f"QAT step {step + 1}/{config.steps}: KL {history[-1]:.4f}", flush=True)
    except BaseException:
        with torch.no_grad():
            for (i, n), w in saved.items():
                lins[(i, n)].weight.copy_(w)
        raise
    finally:
        for p in model.parameters():
            p.requires_grad_(was[id(p)])
    return history
