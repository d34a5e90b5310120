"""Evaluation: perplexity on WikiText-2, KL divergence and top-1 agreement, speed.

Perplexity protocol (the one GPTQ and AWQ report, at a shorter context):
tokenize the whole WikiText-2 raw test text without BOS, cut it into
non-overlapping windows of ``ctx`` tokens (stride = ``ctx``), score every
window independently, and return ``exp`` of the mean negative log-likelihood
over all predicted tokens (``ctx - 1`` per window).  ``FAST`` uses the first 8
windows of 512 tokens (4,096 tokens, ≈10 s on two CPU cores) for notebooks;
``FULL`` uses every window (≈ 560 windows, ≈12 min on two CPU cores).

KL divergence ``KL(p_float ‖ p_quant)`` per token, averaged, and the fraction of
tokens whose arg-max agrees, are far more sensitive than perplexity to small
changes: a quantized model can keep the perplexity of the float one while
disagreeing on 5 % of next-token choices.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import tokenize_corpus

__all__ = [
    "EvalConfig",
    "FAST",
    "FULL",
    "KL_FAST",
    "eval_windows",
    "perplexity",
    "nll_and_count",
    "ReferenceLogits",
    "reference_logits",
    "logit_agreement",
    "throughput",
]


@dataclass(frozen=True)
class EvalConfig:
    """Which windows of the evaluation text to score.

    Args:
        ctx: tokens per window (stride is the same: windows do not overlap).
        n_windows: how many windows from the start of the text; ``None`` for all.
        batch_size: windows per forward pass.
    """

    ctx: int = 512
    n_windows: int | None = 8
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.ctx < 2:
            raise ValueError(f"ctx={self.ctx}: must be at least 2")
        if self.n_windows is not None and self.n_windows < 1:
            raise ValueError(f"n_windows={self.n_windows}: must be positive or None (all)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be positive")


FAST = EvalConfig(ctx=512, n_windows=8)
FULL = EvalConfig(ctx=512, n_windows=None, batch_size=4)
KL_FAST = EvalConfig(ctx=256, n_windows=4)


def eval_windows(tokenizer, config: EvalConfig = FAST) -> torch.Tensor:
    """int64 ``(n_windows, ctx)`` windows of the evaluation text."""
    ids = tokenize_corpus(tokenizer, "eval")
    available = len(ids) // config.ctx
    n = available if config.n_windows is None else config.n_windows
    if n > available:
        raise ValueError(f"n_windows={n}: the evaluation text has only {available} windows of {config.ctx}")
    return ids[: n * config.ctx].view(n, config.ctx)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids.to(_device(model)), use_cache=False).logits.float()


@torch.no_grad()
def nll_and_count(model: torch.nn.Module, tokenizer, config: EvalConfig = FAST) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and the number of predicted tokens: ``ctx - 1`` per window."""
    windows = eval_windows(tokenizer, config)
    nll, count = 0.0, 0
    for batch in windows.split(config.batch_size):
        logits = _logits(model, batch)[:, :-1]  # (B, T-1, V): position t predicts token t+1
        target = batch[:, 1:].to(logits.device)
        nll += float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
        count += target.numel()
    return nll, count


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokenizer, config: EvalConfig = FAST) -> float:
    """WikiText-2 test perplexity under the protocol in the module docstring."""
    nll, count = nll_and_count(model, tokenizer, config)
    return math.exp(nll / count)


@dataclass
class ReferenceLogits:
    """Log-probabilities of the float model on fixed windows, computed once."""

    windows: torch.Tensor  # (n, ctx) int64
    logprobs: torch.Tensor  # (n, ctx, vocab) float32, on CPU


@torch.no_grad()
def reference_logits(model: torch.nn.Module, tokenizer, config: EvalConfig = KL_FAST) -> ReferenceLogits:
    """Run the reference (float) model once over ``config``'s windows."""
    windows = eval_windows(tokenizer, config)
    out = [F.log_softmax(_logits(model, b), dim=-1).cpu() for b in windows.split(config.batch_size)]
    return ReferenceLogits(windows, torch.cat(out))


@torch.no_grad()
def logit_agreement(model: torch.nn.Module, reference: ReferenceLogits, batch_size: int = 1,
                    with_perplexity: bool = False) -> dict[str, float]:
    """``{'kl': mean KL(p_ref ‖ p_model) in nats/token, 'top1': fraction of equal arg-max}``.

    ``with_perplexity=True`` adds ``'perplexity'``: the model's perplexity on the reference windows from the
    same forward passes, under the protocol of :func:`perplexity` (``ctx - 1`` predicted tokens per window), so
    a reference built with ``EvalConfig(ctx, n)`` gives ``perplexity(model, tokenizer, EvalConfig(ctx, n))``
    (to float rounding) without a second pass over the text.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be positive")
    kl_sum, agree, count, nll, predicted = 0.0, 0, 0, 0.0, 0
    for ids, ref in zip(reference.windows.split(batch_size), reference.logprobs.split(batch_size)):
        logits = _logits(model, ids)
        lp = F.log_softmax(logits, dim=-1).cpu()
        kl_sum += float((ref.exp() * (ref - lp)).sum())
        agree += int((ref.argmax(-1) == lp.argmax(-1)).sum())
        count += ids.numel()
        if with_perplexity:
            target = ids[:, 1:].to(logits.device)
            nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), reduction="sum"))
            predicted += target.numel()
    out = {"kl": kl_sum / count, "top1": agree / count}
    if with_perplexity:
        out["perplexity"] = math.exp(nll / predicted)
    return out


@torch.no_grad()
def throughput(model: torch.nn.Module, tokenizer, n_new_tokens: int = 32, prompt: str = "The history of") -> dict[str, float]:
    """Greedy decode of ``n_new_tokens``: wall time (s) and decode tokens/s (prefill included)."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(_device(model))
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=n_new_tokens, min_new_tokens=n_new_tokens, do_sample=False)
    if ids.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens_per_s": n_new_tokens / wall}
