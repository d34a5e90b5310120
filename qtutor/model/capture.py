"""Stream activations of the real model into observers, without storing them.

Forward pre-hooks on chosen linear layers hand each input ``x`` (flattened to
``(tokens, hidden)``) to one observer per layer — a calibration observer from
:mod:`qtutor.observers`, or :class:`OutlierStats` for the outlier atlas.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .walk import decoder_linears

__all__ = ["UNIQUE_INPUTS", "OutlierStats", "observe_linear_inputs"]

# q/k/v read the same tensor, and so do gate/up: one of each pair is enough
UNIQUE_INPUTS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


class OutlierStats:
    """Per-channel statistics of ``|x|`` for the outlier atlas.

    Attributes (after :meth:`observe`): ``absmax`` (C,), ``n_over`` (C,) count of
    ``|x| > threshold``, ``abs_sum`` (C,), ``n_tokens``, ``n_tokens_with_outlier``.
    """

    def __init__(self, threshold: float = 6.0) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold={threshold}: must be positive")
        self.threshold = threshold
        self.n_tokens = 0
        self.n_tokens_with_outlier = 0

    def observe(self, x: torch.Tensor) -> None:
        a = x.detach().float().reshape(-1, x.shape[-1]).abs()  # (tokens, C)
        over = a > self.threshold
        if self.n_tokens == 0:
            self.absmax = a.amax(0)
            self.n_over = over.sum(0)
            self.abs_sum = a.sum(0).double()
            self.median_sum = float(a.median()) * a.shape[0]
        else:
            if a.shape[1] != self.absmax.shape[0]:
                raise ValueError(f"hidden size {a.shape[1]} differs from earlier batches ({self.absmax.shape[0]})")
            self.absmax = torch.maximum(self.absmax, a.amax(0))
            self.n_over += over.sum(0)
            self.abs_sum += a.sum(0).double()
            self.median_sum += float(a.median()) * a.shape[0]
        self.n_tokens += a.shape[0]
        self.n_tokens_with_outlier += int(over.any(1).sum())

    @property
    def median_abs(self) -> float:
        """Token-weighted mean of each batch's median ``|x|`` (an approximation of the overall median)."""
        return self.median_sum / self.n_tokens

    def outlier_channels(self) -> torch.Tensor:
        """Indices of channels where some ``|x|`` exceeded the threshold, largest first."""
        idx = (self.n_over > 0).nonzero().flatten()
        return idx[self.absmax[idx].argsort(descending=True)]


@torch.no_grad()
def observe_linear_inputs(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    make_observer: Callable[[str, nn.Linear], object],
    only: Callable[[str], bool] | None = None,
) -> dict[str, object]:
    """Run ``model`` over ``batches`` of token ids; feed each chosen linear's input to its observer.

    Args:
        model: a Llama-family causal LM.
        batches: int64 token ids, each ``(batch, seq_len)``.
        make_observer: ``(name, linear) -> observer`` with an ``observe(x)`` method.
        only: keep a layer if ``only(name)``; default: :data:`UNIQUE_INPUTS`.

    Returns ``{layer name: observer}``.
    """
    if only is None:
        only = lambda name: name.endswith(UNIQUE_INPUTS)  # noqa: E731
    linears = {n: m for n, m in decoder_linears(model).items() if only(n)}
    observers = {n: make_observer(n, m) for n, m in linears.items()}
    device = next(model.parameters()).device
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: observers[n].observe(args[0]))
        for n, m in linears.items()
    ]
    seen = 0
    try:
        for ids in batches:
            model(ids.to(device), use_cache=False)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
    if seen == 0:
        raise ValueError("the calibration set is empty: pass at least one batch of token ids")
    return observers
