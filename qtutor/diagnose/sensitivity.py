"""Per-layer sensitivity: quantize one decoder linear (or one block) at a time, all others float.

The measured map follows the protocol of HAWQ's and llama.cpp's ablations: the
damage of a layer is what its quantization alone does to the model's output,
``KL(p_float ‖ p_quant)`` per token and the top-1 agreement on held-out windows
(:func:`qtutor.eval.logit_agreement` against :func:`qtutor.eval.reference_logits`).

The cheap proxy needs one forward pass of calibration data and no evaluation:

* ``"activation"``: ``Σ_j E[x_j²] · ‖ΔW_{:,j}‖²`` — the expected squared output
  error of the layer when its input channels are uncorrelated; llama.cpp's
  importance matrix (``imatrix``: the per-column mean of squared activations)
  weights the rounding error of ``make_qx_quants`` the same way;
* ``"trace"``: ``mean_j E[x_j²] · ‖ΔW‖²`` — HAWQ-V2's Hessian-trace weighting
  (Dong et al., NeurIPS 2020), with ``H = 2 E[x xᵀ]``: ``tr(H) / n = 2 mean_j E[x_j²]``;
* ``"weight"``: ``‖ΔW‖²`` — no activations at all, the baseline a proxy must beat.

:func:`rank_correlation` (Spearman's ρ, ties averaged) says how well a proxy
orders the layers like the measured map.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..eval import ReferenceLogits, logit_agreement
from ..methods.gptq import GPTQ, GPTQConfig
from ..model.walk import decoder_linears
from ..primitives.grid import rtn_grid_quantize
from ..progress import progress

__all__ = [
    "METHODS", "PROXIES", "layer_info", "activation_sq_means", "gptq_hessians", "quantized_weight",
    "proxy_damage", "proxy_table", "layer_sensitivity", "block_sensitivity", "rank_correlation",
]

METHODS = ("RTN", "GPTQ")
PROXIES = ("activation", "trace", "weight")


def layer_info(name: str) -> tuple[int, str]:
    """``'model.layers.7.self_attn.q_proj'`` -> ``(7, 'q_proj')``."""
    parts = name.split(".")
    try:
        i = parts.index("layers")
        return int(parts[i + 1]), parts[-1]
    except (ValueError, IndexError):
        raise ValueError(f"{name!r} is not a decoder linear name (expected 'model.layers.<i>.<...>.<proj>')") from None


def _forward_with_pre_hooks(model: nn.Module, input_ids: torch.Tensor, hooks: dict[nn.Module, Callable],
                            batch_size: int) -> None:
    """Run ``model`` over ``input_ids`` in batches with a forward pre-hook on each module, removed afterwards."""
    handles = [m.register_forward_pre_hook(h) for m, h in hooks.items()]
    try:
        device = next(model.parameters()).device
        for ids in input_ids.split(batch_size):
            model(ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def activation_sq_means(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """``{layer name: E[x_j²]}`` (float64, (in_features,)) of every decoder linear's input over ``input_ids``.

    The per-column mean of squared activations: llama.cpp's importance matrix.
    """
    linears = decoder_linears(model)
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def make_hook(name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])  # (tokens, in)
            sums[name] += x.double().pow(2).sum(0).cpu()
            counts[name] += x.shape[0]
        return hook

    _forward_with_pre_hooks(model, input_ids, {m: make_hook(n) for n, m in linears.items()}, batch_size)
    return {n: sums[n] / counts[n] for n in linears}


@torch.no_grad()
def gptq_hessians(model: nn.Module, input_ids: torch.Tensor, names: Iterable[str] | None = None,
                  batch_size: int = 4) -> dict[str, GPTQ]:
    """A :class:`GPTQ` per layer holding ``H = 2 X Xᵀ / n`` of its inputs in the *float* model.

    Each layer is quantized alone, every other layer float, so the float model's
    inputs are exactly the inputs that layer sees (no sequential pass needed).
    """
    linears = decoder_linears(model)
    names = list(linears) if names is None else list(names)
    solvers = {n: GPTQ(linears[n].weight, n) for n in names}
    hooks = {linears[n]: (lambda m, a, n=n: solvers[n].add_batch(a[0])) for n in names}
    _forward_with_pre_hooks(model, input_ids, hooks, batch_size)
    return solvers


def quantized_weight(w: torch.Tensor, n_bits: int, group_size: int | None, method: str = "RTN",
                     solver: GPTQ | None = None) -> torch.Tensor:
    """The dequantized copy of ``w`` (out, in) under ``method`` on the shared grid (asymmetric, integer zero-point)."""
    if method == "RTN":
        return rtn_grid_quantize(w, n_bits, group_size).dequantize(w.dtype)
    if method == "GPTQ":
        if solver is None:
            raise ValueError("method='GPTQ' needs the layer's solver (gptq_hessians) for its Hessian")
        return solver.quantize(GPTQConfig(n_bits, group_size)).dequantize(w.dtype)
    raise ValueError(f"method={method!r}: must be one of {METHODS}")


def proxy_damage(w: torch.Tensor, w_hat: torch.Tensor, x_sq_mean: torch.Tensor, kind: str = "activation") -> float:
    """Proxy damage of replacing ``w`` (out, in) by ``w_hat``; ``x_sq_mean``: E[x_j²] (in,). See the module docstring."""
    if kind not in PROXIES:
        raise ValueError(f"kind={kind!r}: must be one of {PROXIES}")
    if w.shape != w_hat.shape or x_sq_mean.shape != (w.shape[1],):
        raise ValueError(f"w {tuple(w.shape)}, w_hat {tuple(w_hat.shape)} and x_sq_mean {tuple(x_sq_mean.shape)}: "
                         "expected (out, in), (out, in) and (in,)")
    col_err = (w.double() - w_hat.double()).pow(2).sum(0)  # ‖ΔW_{:,j}‖², (in,)
    if kind == "activation":
        return float((x_sq_mean.double().to(col_err.device) * col_err).sum())
    if kind == "trace":
        return float(x_sq_mean.double().mean() * col_err.sum())
    return float(col_err.sum())


def proxy_table(model: nn.Module, x_sq: dict[str, torch.Tensor], options: Sequence[tuple[int, int | None]],
                kinds: Sequence[str] = ("activation",), show_progress: bool = True) -> pd.DataFrame:
    """Proxy damage of every decoder linear under every ``(n_bits, group_size)`` option, RTN (one row each)."""
    rows = []
    for name, lin in progress(decoder_linears(model).items(), "proxy", unit="layer", enabled=show_progress,
                              total=len(x_sq)):
        block, proj = layer_info(name)
        w = lin.weight.detach()
        for n_bits, group_size in options:
            w_hat = quantized_weight(w, n_bits, group_size)
            row = {"layer": name, "block": block, "proj": proj, "bits": n_bits, "group_size": group_size,
                   "n_params": w.numel(), "in_features": w.shape[1], "out_features": w.shape[0]}
            row.update({f"proxy_{k}": proxy_damage(w, w_hat, x_sq[name], k) for k in kinds})
            rows.append(row)
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _swapped(linears: dict[str, nn.Linear], new_weights: dict[str, torch.Tensor]):
    saved = {n: linears[n].weight.detach().clone() for n in new_weights}
    try:
        with torch.no_grad():
            for n, w in new_weights.items():
                linears[n].weight.copy_(w)
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                linears[n].weight.copy_(w)


def layer_sensitivity(model: nn.Module, reference: ReferenceLogits, bits: Sequence[int] = (3,),
                      group_size: int | None = 128, methods: Sequence[str] = ("RTN",),
                      names: Sequence[str] | None = None, calib: torch.Tensor | None = None,
                      x_sq: dict[str, torch.Tensor] | None = None, show_progress: bool = True) -> pd.DataFrame:
    """Quantize one decoder linear at a time (all others float) and measure KL and top-1 against ``reference``.

    Returns one row per (layer, bits, method): ``layer, block, proj, bits, group_size, method, kl, top1,
    n_params`` and, when ``x_sq`` (:func:`activation_sq_means`) is given, ``proxy_activation``,
    ``proxy_trace`` and ``proxy_weight`` of the same quantized weight. ``calib`` (int64 ids) is needed for GPTQ.
    """
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods contains {m!r}: allowed {METHODS}")
    linears = decoder_linears(model)
    names = list(linears) if names is None else list(names)
    unknown = [n for n in names if n not in linears]
    if unknown:
        raise ValueError(f"names: {unknown[:3]} are not decoder linears of this model")
    solvers = {}
    if "GPTQ" in methods:
        if calib is None:
            raise ValueError("methods includes 'GPTQ': pass calib (int64 calibration ids) for the Hessians")
        solvers = gptq_hessians(model, calib, names)
    rows = []
    for name in progress(names, "one layer at a time", unit="layer", enabled=show_progress):
        block, proj = layer_info(name)
        w = linears[name].weight.detach().clone()
        for method in methods:
            for n_bits in bits:
                w_hat = quantized_weight(w, n_bits, group_size, method, solvers.get(name))
                with _swapped(linears, {name: w_hat}):
                    agreement = logit_agreement(model, reference)
                row = {"layer": name, "block": block, "proj": proj, "bits": n_bits, "group_size": group_size,
                       "method": method, "kl": agreement["kl"], "top1": agreement["top1"], "n_params": w.numel()}
                if x_sq is not None:
                    row.update({f"proxy_{k}": proxy_damage(w, w_hat, x_sq[name], k) for k in PROXIES})
                rows.append(row)
        solvers.pop(name, None)  # free the Hessian
    return pd.DataFrame(rows)


def block_sensitivity(model: nn.Module, reference: ReferenceLogits, bits: Sequence[int] = (3,),
                      group_size: int | None = 128, blocks: Sequence[int] | None = None,
                      show_progress: bool = True) -> pd.DataFrame:
    """RTN-quantize every linear of one decoder block at a time; one row per (block, bits): ``kl, top1, n_params``."""
    linears = decoder_linears(model)
    by_block: dict[int, list[str]] = {}
    for n in linears:
        by_block.setdefault(layer_info(n)[0], []).append(n)
    blocks = sorted(by_block) if blocks is None else list(blocks)
    rows = []
    for b in progress(blocks, "one block at a time", unit="block", enabled=show_progress):
        for n_bits in bits:
            new = {n: quantized_weight(linears[n].weight.detach(), n_bits, group_size) for n in by_block[b]}
            with _swapped(linears, new):
                agreement = logit_agreement(model, reference)
            rows.append({"block": b, "bits": n_bits, "group_size": group_size, "method": "RTN",
                         "kl": agreement["kl"], "top1": agreement["top1"],
                         "n_params": sum(linears[n].weight.numel() for n in by_block[b])})
    return pd.DataFrame(rows)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1…n of ``a``, ties given their average rank (as Spearman's ρ needs)."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(proxy: Sequence[float], measured: Sequence[float]) -> float:
    """Spearman's rank correlation ρ of two equally long sequences (ties averaged); 1.0 = same order."""
    x, y = np.asarray(proxy, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"proxy and measured must be 1-D of the same length ≥ 2, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("proxy and measured must be finite (a NaN has no rank)")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx**2).sum() * (ry**2).sum())
    if den == 0:
        raise ValueError("one of the sequences is constant: its ranks carry no order to correlate")
    return float((rx * ry).sum() / den)
