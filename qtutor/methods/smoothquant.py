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
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.walk import decoder_blocks

__all__ = ["smoothing_scales", "smooth_model_"]


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """``s`` (K,) from per-channel ``max|X|`` (K,) and the weights (N_i, K) that read X."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must be in [0, 1]")
    K = act_absmax.shape[0]
    for w in weights:
        if w.shape[1] != K:
            raise ValueError(f"a weight of shape {tuple(w.shape)} does not read {K} input channels")
    w_absmax = torch.cat([w.detach().abs() for w in weights]).amax(0).float().clamp(min=1e-5)
    return (act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=1e-5)


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
    for i, block in enumerate(decoder_blocks(model)):
        attn, mlp = block.self_attn, block.mlp
        for key, norm, lins in (
            (f"model.layers.{i}.self_attn.q_proj", block.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
            (f"model.layers.{i}.mlp.gate_proj", block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
        ):
            if key not in act_absmax:
                raise ValueError(f"act_absmax has no statistics for {key}")
            _fold(norm, lins, smoothing_scales(act_absmax[key], [l.weight for l in lins], alpha))
