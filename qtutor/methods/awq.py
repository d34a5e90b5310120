"""AWQ: activation-aware weight quantization — the scale search and the clipping search.

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration" (MLSys 2024), §3, following the reference code
(mit-han-lab/llm-awq, ``awq/quantize/auto_scale.py`` and ``auto_clip.py``):

* the quantizer is ``pseudo_quantize_tensor``: asymmetric min-max per group with
  an integer zero-point, the range *not* widened to include 0, scale clamped at 1e-5;
* ``search_scales``: per input channel ``s = mean|x|^α``, normalised by
  ``sqrt(max(s) · min(s))``, α on a grid of 20 values in [0, 1); for each α the
  weights are multiplied by ``s``, quantized, divided by ``s``, and the loss is the
  mean squared difference of the *inspected module's* output (e.g. the whole MLP
  for gate/up); the best α wins (α = 0 is plain round-to-nearest);
* ``fold_scales_into_norm``: ``norm.weight /= s``, ``W *= s`` — the float model is unchanged;
* ``search_clip``: per output channel and group, shrink ``max|w|`` by up to 50 % in 20
  steps and keep the one with least output error on (up to) 512 sampled tokens.

``qtutor.pipeline.awq`` runs these on every block of a model, as :class:`AWQConfig` says (the
config lives here, beside the method, so that ``qtutor.config`` needs no pipeline).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..primitives.grid import check_group_size, check_n_bits_group_size, n_groups, rtn_grid_quantize

__all__ = ["AWQConfig", "pseudo_quantize_tensor", "search_scales", "fold_scales_into_norm", "search_clip", "apply_clip",
           "check_activations", "check_weights"]


@dataclass(frozen=True)
class AWQConfig:
    """AWQ's knobs, with the reference defaults (``w_bit=4, q_group_size=128``)."""

    n_bits: int = 4
    group_size: int | None = 128  # None: one scale per output row
    n_grid: int = 20
    clip: bool = True

    def __post_init__(self) -> None:
        check_n_bits_group_size(self.n_bits, self.group_size)
        if not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise ValueError(f"n_grid={self.n_grid}: must be at least 1")


def pseudo_quantize_tensor(w: torch.Tensor, n_bits: int = 4, group_size: int | None = 128) -> torch.Tensor:
    """The reference's fake quantizer: (out, in) -> (out, in), asymmetric per group of ``group_size`` inputs.

    ``group_size=None`` means one group per row (the reference's ``-1``, which is
    refused here: "no groups" is spelled ``None``). Unlike the reference, a
    ``group_size`` that does not divide ``in_features`` gives a shorter last group.
    """
    q = rtn_grid_quantize(w.reshape(-1, w.shape[-1]), n_bits, group_size)
    return q.dequantize(w.dtype).reshape(w.shape)


def check_activations(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` unless the calibration activations ``x`` are a finite, non-empty float tensor."""
    if not x.is_floating_point():
        raise ValueError(f"{name}: calibration activations have dtype {x.dtype}; expected a float tensor")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty calibration activations (shape {tuple(x.shape)}); the calibration set "
                         "has no tokens")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{name}: the calibration activations contain NaN or Inf (first at {bad}); "
                         "the weights are not the cause")


def check_weights(linears: list[nn.Linear], name: str = "linears") -> None:
    """Raise ``ValueError`` unless every weight in ``linears`` is finite."""
    for k, lin in enumerate(linears):
        if not bool(torch.isfinite(lin.weight).all()):
            raise ValueError(f"{name}[{k}]: the weights contain NaN or Inf; the calibration activations are "
                             "not the cause")


@torch.no_grad()
def search_scales(
    module: Callable[[torch.Tensor], torch.Tensor],
    linears: list[nn.Linear],
    x: torch.Tensor,
    n_bits: int = 4,
    group_size: int | None = 128,
    n_grid: int = 20,
) -> tuple[torch.Tensor, float, list[float]]:
    """Best per-channel scales for ``linears`` (which all read ``x``), judged on ``module(x)``.

    Returns ``(scales (in_features,), best ratio α, loss for every α)``. The weights
    of ``linears`` are restored before returning, also when an error interrupts the search.
    """
    check_n_bits_group_size(n_bits, group_size)
    if not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid={n_grid!r}: must be a positive integer")
    check_activations(x)
    check_weights(linears)
    org_out = module(x)
    if isinstance(org_out, tuple):
        org_out = org_out[0]
    x_mean = x.abs().reshape(-1, x.shape[-1]).float().mean(0)  # (in,) the reference's get_act_scale
    saved = [lin.weight.detach().clone() for lin in linears]
    best = (float("inf"), -1.0, None)
    history = []
    try:
        for i in range(n_grid):
            ratio = i / n_grid
            s = x_mean.pow(ratio).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for lin in linears:
                lin.weight.mul_(s.view(1, -1))
                lin.weight.copy_(pseudo_quantize_tensor(lin.weight, n_bits, group_size) / s.view(1, -1))
            out = module(x)
            if isinstance(out, tuple):
                out = out[0]
            loss = (org_out - out).float().pow(2).mean().item()
            history.append(loss)
            if loss < best[0]:
                best = (loss, ratio, s.clone())
            for lin, w in zip(linears, saved):
                lin.weight.copy_(w)
    finally:  # an error half-way leaves the weights as they came in
        for lin, w in zip(linears, saved):
            lin.weight.copy_(w)
    if best[2] is None:
        raise ValueError(f"no α gave a finite output error (losses {history[:3]}…): the module's outputs "
                         "overflow on these activations")
    return best[2], best[1], history


def _check_scales(scales: torch.Tensor, n: int) -> None:
    if scales.shape != (n,) or not bool(torch.isfinite(scales).all()) or not bool((scales > 0).all()):
        raise ValueError(f"scales must be {n} finite positive values (one per channel), got shape "
                         f"{tuple(scales.shape)}, min {float(scales.min()) if scales.numel() else 'n/a'}")


@torch.no_grad()
def fold_scales_into_norm(norm: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """``norm.weight /= s`` and each ``W[:, j] *= s_j``: the product is unchanged (the reference's ``scale_ln_fcs``)."""
    _check_scales(scales, norm.weight.shape[-1])
    norm.weight.div_(scales.to(norm.weight.dtype))
    for lin in linears:
        lin.weight.mul_(scales.view(1, -1).to(lin.weight.dtype))


@torch.no_grad()
def search_clip(
    w: torch.Tensor, x: torch.Tensor, n_bits: int = 4, group_size: int | None = 128,
    n_grid: int = 20, max_shrink: float = 0.5, n_sample_token: int = 512,
) -> torch.Tensor:
    """Best clipping ``max|w|`` per output channel and group: (out, n_groups, 1) (the reference's ``auto_clip_layer``).

    ``group_size=None``: one group per row. Changes nothing; :func:`apply_clip` applies the result.
    """
    check_n_bits_group_size(n_bits, group_size)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got {tuple(w.shape)}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, the weight reads {w.shape[1]}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w: the weights contain NaN or Inf; the calibration activations are not the cause")
    check_activations(x)
    out_features, in_features = w.shape
    gs = group_size or in_features
    x = x.reshape(-1, in_features)
    pad = n_groups(in_features, gs) * gs - in_features
    if pad:  # a short last group: zero inputs, replicated weights leave its error and max|w| unchanged
        x = F.pad(x, (0, pad))
        w = F.pad(w.unsqueeze(0), (0, pad), mode="replicate")[0]
    x = x.reshape(1, x.shape[0], -1, gs)  # (1, tokens, n_groups, gs)
    x = x[:, 0::max(x.shape[1] // n_sample_token, 1)]
    w = w.reshape(out_features, 1, -1, gs)  # (out, 1, n_groups, gs)
    batch = 256 if out_features % 256 == 0 else 64
    best_all = []
    for b in range(0, out_features, batch):
        wb = w[b:b + batch]
        org_max = wb.abs().amax(dim=-1, keepdim=True)  # (ob, 1, n_groups, 1)
        best_max = org_max.clone()
        min_errs = torch.full(org_max.shape, float("inf"), device=w.device)  # float32: 1e9 overflows fp16
        # (ob, tokens, n_groups): the reference's (x * w).sum(-1), as one batched matmul per group
        org_out = torch.einsum("tgk,ogk->otg", x[0], wb[:, 0])
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i_s / n_grid)
            cur = torch.clamp(wb, -max_val, max_val)
            q = pseudo_quantize_tensor(cur.reshape(-1, gs), n_bits, gs).reshape(cur.shape)  # (ob, 1, n_groups, gs)
            err = (torch.einsum("tgk,ogk->otg", x[0], q[:, 0]) - org_out).float().pow(2).mean(dim=1).view(min_errs.shape)
            better = err < min_errs
            min_errs[better] = err[better]
            best_max[better] = max_val[better]
        best_all.append(best_max)
    return torch.cat(best_all, dim=0).squeeze(1)  # (out, n_groups, 1)


@torch.no_grad()
def apply_clip(linear: nn.Linear, max_val: torch.Tensor, group_size: int | None = 128) -> None:
    """Clamp ``linear.weight`` to ``±max_val`` (out, n_groups, 1) per group (the reference's ``apply_clip``)."""
    check_group_size(group_size)
    w = linear.weight
    out_features, in_features = w.shape
    gs = group_size or in_features
    if max_val.shape != (out_features, n_groups(in_features, gs), 1) or not bool(torch.isfinite(max_val).all()):
        raise ValueError(f"max_val must be finite, of shape ({out_features}, {n_groups(in_features, gs)}, 1); got "
                         f"{tuple(max_val.shape)}")
    g = torch.arange(in_features, device=w.device) // gs
    bound = max_val[:, :, 0].to(w.dtype)[:, g]  # (out, in)
    w.copy_(torch.maximum(torch.minimum(w, bound), -bound))
