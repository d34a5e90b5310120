"""SmoothQuant: migrate activation outliers into the weights before W8A8.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization
for Large Language Models" (ICML 2023), eq. 4: for each input channel j of a
linear layer,

    s_j = max|X_j|^α / max|W_j|^(1−α),      X' = X diag(s)⁻¹,   W' = W diag(s)

so ``X'W'ᵀ = XWᵀ`` exactly.  ``diag(s)⁻¹`` is folded into the RMSNorm that
produces X, so the float model is unchanged and no extra op runs.  As in the
reference (mit-han-lab/smoothquant, ``smooth.py``: ``smooth_lm(model, scales,
alpha=0.5)``, scales clamped at 1e-5), q/k/v share the attention norm and
gate/up share the MLP norm; ``o_proj`` and ``down_proj`` have no norm before them
and are left as they are.

:func:`smooth_model_` is transactional: every statistic, every weight and every
scale (that it fits the weights' dtype) is checked for all blocks before the first
one is changed, so an error leaves the model exactly as it was.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.walk import decoder_blocks

__all__ = ["smoothing_scales", "smooth_model_"]


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float = 0.5,
                     name: str = "act_absmax") -> torch.Tensor:
    """``s`` (K,) from per-channel ``max|X|`` (K,) and the weights (N_i, K) that read X.

    ``name`` labels ``act_absmax`` in errors (e.g. ``act_absmax[model.layers.3.mlp.gate_proj]``).
    """
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:  # NaN fails too
        raise ValueError(f"alpha={alpha}: must be in [0, 1]")
    if not isinstance(act_absmax, torch.Tensor) or act_absmax.ndim != 1 or not act_absmax.is_floating_point():
        raise ValueError(f"{name} must be a 1-D float tensor of per-channel max|X|, got "
                         f"{getattr(act_absmax, 'dtype', type(act_absmax).__name__)} "
                         f"{tuple(getattr(act_absmax, 'shape', ()))}")
    K = act_absmax.shape[0]
    if not bool(torch.isfinite(act_absmax).all()):
        raise ValueError(f"{name} contains NaN or Inf: the calibration activations overflowed (not the weights)")
    if bool((act_absmax < 0).any()):
        raise ValueError(f"{name} has negative entries (min {float(act_absmax.min()):g}): max|X| is never negative")
    for w in weights:
        if w.shape[1] != K:
            raise ValueError(f"a weight of shape {tuple(w.shape)} does not read {K} input channels")
    w_absmax = torch.cat([w.detach().abs() for w in weights]).amax(0).float().clamp(min=1e-5)
    return (act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=1e-5)


def _check_fold(norm: nn.Module, linears: list[nn.Linear], names: list[str], s: torch.Tensor, norm_name: str) -> None:
    """Raise unless ``norm.weight / s`` and every ``W · s`` stay finite in their dtypes (checked without writing)."""
    for lin, n in zip(linears, names):
        if not bool(torch.isfinite(lin.weight).all()):
            raise ValueError(f"{n}: the weights contain NaN or Inf; the calibration statistics are not the cause")
    for t, n in [(norm.weight, norm_name)] + [(lin.weight, n) for lin, n in zip(linears, names)]:
        st = s.to(t.dtype)
        big = torch.finfo(t.dtype).max
        col_max = t.detach().abs().float().reshape(-1, s.numel()).amax(0)  # (K,) max|t| per input channel
        if not bool(torch.isfinite(st).all()) or bool((col_max * st.float() > big).any()) \
                or not bool(torch.isfinite(s.float()).all()):
            raise ValueError(f"{n}: the smoothing scales (max {float(s.max()):.3g}) overflow {str(t.dtype)[6:]} "
                             "when folded in; lower alpha or check the activation statistics")


@torch.no_grad()
def _fold(norm: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    norm.weight.div_(s.to(norm.weight.dtype))
    for lin in linears:
        lin.weight.mul_(s.to(lin.weight.dtype)[None, :])


def smooth_model_(model: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float = 0.5) -> None:
    """Smooth every block in place.

    Args:
        model: a Llama-family causal LM.
        act_absmax: per-channel ``max|X|`` of the inputs of ``model.layers.{i}.self_attn.q_proj``
            and ``model.layers.{i}.mlp.gate_proj`` (e.g. ``OutlierStats.absmax``).
        alpha: migration strength: 1 moves all of the activations' range into the weights,
            0 all of the weights' range into the activations.
    """
    plan = []  # every scale is computed and checked before the first block changes
    for i, block in enumerate(decoder_blocks(model)):
        attn, mlp = block.self_attn, block.mlp
        for key, norm, names in (
            (f"model.layers.{i}.self_attn.q_proj", block.input_layernorm,
             ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            (f"model.layers.{i}.mlp.gate_proj", block.post_attention_layernorm, ["mlp.gate_proj", "mlp.up_proj"]),
        ):
            if key not in act_absmax:
                raise ValueError(f"act_absmax has no statistics for {key}")
            lins = [block.get_submodule(n) for n in names]
            full = [f"model.layers.{i}.{n}" for n in names]
            for lin, n in zip(lins, full):
                if not bool(torch.isfinite(lin.weight).all()):
                    raise ValueError(f"{n}: the weights contain NaN or Inf; the calibration statistics are not the cause")
            stats = act_absmax[key]
            if isinstance(stats, torch.Tensor) and stats.shape != (lins[0].in_features,):
                raise ValueError(f"act_absmax[{key}] has shape {tuple(stats.shape)}, the layer reads "
                                 f"({lins[0].in_features},) channels")
            s = smoothing_scales(stats, [l.weight for l in lins], alpha, name=f"act_absmax[{key}]")
            norm_name = "input_layernorm" if norm is block.input_layernorm else "post_attention_layernorm"
            _check_fold(norm, lins, full, s, f"model.layers.{i}.{norm_name}")
            plan.append((norm, lins, s))
    for norm, lins, s in plan:
        _fold(norm, lins, s)
