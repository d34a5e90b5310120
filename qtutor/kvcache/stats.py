"""Measuring a model's keys and values, and what a quantized cache costs in quality.

- :func:`kv_states`: the keys (after RoPE, as cached) and values of every layer for some token ids.
- :func:`channel_outlier_ratio`: per head, the largest channel's max |x| over the median channel's; KIVI's
  observation is that this is large for keys (a few channels carry big magnitudes in every token) and near 1 for
  values.
- :func:`grouping_error`: the relative error of quantizing a state per channel (one scale per channel over a
  group of tokens) or per token (one scale per token over a group of channels), asymmetric min/max as the cache
  stores it.
- :func:`position_nll`: each token's negative log-likelihood when the text is fed through a cache in chunks, so
  that every chunk attends to the older chunks as the cache holds them (quantized) and to itself in full precision.
- :func:`greedy_agreement`: the fraction of greedily generated tokens equal to the float cache's, up to the first
  difference and overall.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicCache

from .quant import dequantize_keys, dequantize_values, quantize_keys, quantize_values

__all__ = ["kv_states", "channel_outlier_ratio", "grouping_error", "kv_stats", "position_nll", "nll_by_context",
           "greedy_agreement"]


def _check_ids(ids) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids: expected integer token ids of shape (batch, tokens), got "
                         f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}".rstrip())
    if ids.shape[1] < 2:
        raise ValueError(f"ids has {ids.shape[1]} tokens: at least 2 are needed")
    return ids.long()


@torch.no_grad()
def kv_states(model, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys, values)] per decoder layer, each float32 (B, H_kv, T, D), from one forward pass over ``ids``."""
    ids = _check_ids(ids)
    cache = DynamicCache()
    model(ids, past_key_values=cache, use_cache=True)
    return [(layer.keys.float(), layer.values.float()) for layer in cache.layers]


def channel_outlier_ratio(x: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) -> (H,): per head, max over channels of max|x| over tokens, over the median channel's."""
    if x.dim() != 4:
        raise ValueError(f"x: expected (batch, heads, tokens, head_dim), got shape {tuple(x.shape)}")
    absmax = x.abs().amax(dim=(0, 2))  # (H, D)
    return absmax.amax(-1) / absmax.median(-1).values.clamp_min(1e-12)


def grouping_error(x: torch.Tensor, bits: int, per: str, group_size: int = 32) -> float:
    """||x - x̂|| / ||x|| for asymmetric ``bits``-bit codes, ``per`` = "channel" or "token" (B, H, T, D input).

    "channel": one scale and min per channel over each group of ``group_size`` tokens (the tokens past the last
    whole group are left out); "token": per token over groups of ``group_size`` channels.
    """
    if per not in ("channel", "token"):
        raise ValueError(f"per={per!r}: choose 'channel' or 'token'")
    if per == "channel":
        T = x.shape[2] // group_size * group_size
        if T == 0:
            raise ValueError(f"{x.shape[2]} tokens: per-channel grouping needs at least group_size={group_size}")
        x = x[:, :, :T]
        xq = dequantize_keys(*quantize_keys(x, bits, group_size), bits)
    else:
        xq = dequantize_values(*quantize_values(x, bits, group_size), bits)
    return float((x - xq).norm() / x.norm().clamp_min(1e-30))


def kv_stats(states: list[tuple[torch.Tensor, torch.Tensor]], bits: int = 2, group_size: int = 32) -> list[dict]:
    """One row per layer: outlier ratios (median over heads) and the four grouping errors at ``bits``."""
    rows = []
    for i, (k, v) in enumerate(states):
        rows.append({
            "layer": i,
            "key_outlier_ratio": float(channel_outlier_ratio(k).median()),
            "value_outlier_ratio": float(channel_outlier_ratio(v).median()),
            "key_err_per_channel": grouping_error(k, bits, "channel", group_size),
            "key_err_per_token": grouping_error(k, bits, "token", group_size),
            "value_err_per_channel": grouping_error(v, bits, "channel", group_size),
            "value_err_per_token": grouping_error(v, bits, "token", group_size),
        })
    return rows


@torch.no_grad()
def position_nll(model, ids: torch.Tensor, cache: Cache | None = None, chunk: int = 128,
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Per-token NLL (B, T - 1) of ``ids`` fed through ``cache`` (a float ``DynamicCache`` if None) ``chunk`` at a time.

    ``progress(n)`` is called with the number of tokens done after each chunk.
    """
    ids = _check_ids(ids)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: a positive whole number of tokens")
    if cache is None:
        cache = DynamicCache()
    if cache.get_seq_length() != 0:
        raise ValueError(f"cache already holds {cache.get_seq_length()} tokens: pass a fresh cache")
    T = ids.shape[1]
    nll = []
    prev_last = None
    for start in range(0, T, chunk):
        part = ids[:, start:start + chunk]
        logits = model(part, past_key_values=cache, use_cache=True).logits.float()
        logp = torch.log_softmax(logits, -1)
        if prev_last is not None:  # the previous chunk's last position predicts this chunk's first token
            nll.append(-prev_last.gather(-1, part[:, :1]))
        if part.shape[1] > 1:
            nll.append(-logp[:, :-1].gather(-1, part[:, 1:, None]).squeeze(-1))
        prev_last = logp[:, -1]
        if progress is not None:
            progress(min(start + chunk, T))
    return torch.cat(nll, dim=1)


def nll_by_context(nll: torch.Tensor, edges: list[int]) -> dict[str, float]:
    """Perplexity of the tokens whose position falls in each [edges[i], edges[i+1]) bucket of a (B, T-1) NLL."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
        raise ValueError(f"edges={edges!r}: at least two increasing positions from 0")
    if edges[-1] > nll.shape[1] + 1:
        raise ValueError(f"edges end at {edges[-1]} but the NLL covers positions 1 … {nll.shape[1]}")
    out = {}
    for a, b in zip(edges, edges[1:]):
        part = nll[:, max(a - 1, 0):b - 1]  # nll[:, j] is the loss of the token at position j + 1
        out[f"{a}-{b}"] = math.exp(float(part.mean()))
    return out


@torch.no_grad()
def greedy_agreement(model, ids: torch.Tensor, cache: Cache, n_new: int = 32,
                     reference: torch.Tensor | None = None) -> dict:
    """Greedy tokens with ``cache`` against the float cache's (``reference``: those tokens, computed if None).

    Returns {"same_prefix": tokens equal before the first difference, "agreement": fraction equal, "tokens": ...}.
    """
    ids = _check_ids(ids)
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, attention_mask=torch.ones_like(ids))
    if reference is None:
        reference = model.generate(ids, past_key_values=DynamicCache(), **kw)[:, ids.shape[1]:]
    got = model.generate(ids, past_key_values=cache, **kw)[:, ids.shape[1]:]
    same = (got == reference)
    first_diff = (~same).float().argmax(-1)
    prefix = torch.where(same.all(-1), torch.full_like(first_diff, same.shape[1]), first_diff)
    return {"same_prefix": int(prefix.min()), "agreement": float(same.float().mean()), "tokens": got,
            "reference": reference}
