"""QuaRot: rotate a Llama-family model so that its activations have no outlier channels.

Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs" (NeurIPS
2024); reference: github.com/spcl/QuaRot (``rotation_utils.py``: ``fuse_layer_norms``,
``rotate_model``). Three steps, each leaving the float model's function unchanged:

1. **Fold the RMSNorm scales** into the linears that read them:
   ``RMSNorm(x) W_inᵀ = (x / rms(x)) (W_in diag(γ))ᵀ``, then ``γ ← 1``. The final norm's
   scale goes into the LM head, which is untied from the embedding first (SmolLM2 ties them).
2. **Rotate the residual stream** by an orthogonal ``Q`` (a randomized Hadamard,
   ``diag(s) H / √n``): every block reads ``x Q`` and writes ``y Q``. A scale-free RMSNorm commutes
   with ``Q`` (``‖x Q‖ = ‖x‖``), so only the weights change, offline:
   embedding ``E ← E Q``; readers (q, k, v, gate, up, LM head) ``W ← W Q``;
   writers (o_proj, down_proj) ``W ← Qᵀ W``.
3. **Online Hadamards** before the linears whose inputs are not the residual stream
   (``o_proj`` reads the attention heads, ``down_proj`` the MLP's product): the input is
   rotated at run time, ``x ↦ x H``, and the weight offline, ``W ← W H``. QuaRot splits the
   ``o_proj`` rotation into a per-head part folded into ``v_proj`` and a cross-head online part;
   SmolLM2's 9 heads are not a Hadamard order, so here the whole 576-wide input is rotated
   online (the same function, a little more run-time work).

Quantizing the rotated model is unchanged: weights by RTN or GPTQ, activations per token.
:func:`quarot_` is transactional: every check runs before the first weight changes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.walk import decoder_blocks
from .hadamard import apply_hadamard, hadamard_factors, hadamard_matrix, is_hadamard_order, random_signs

__all__ = ["fold_norms_", "rotate_residual_", "add_online_hadamard_", "quarot_", "OnlineHadamard",
           "online_hadamard_layers", "READERS", "WRITERS", "ONLINE"]

READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
ONLINE = ("self_attn.o_proj", "mlp.down_proj")


class OnlineHadamard:
    """A forward pre-hook ``x ↦ x H`` (orthonormal Hadamard of the layer's input width).

    Registered on a linear whose weight was multiplied by the same ``H``; a module holding one
    is rotated (see :func:`online_hadamard_layers`). Quantization hooks registered later see the
    rotated input, as GPTQ's input capture does.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.factors = hadamard_factors(n)
        self._on: dict = {}  # the factors per (device, dtype) of the inputs seen, copied once

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        key = (x.device, x.dtype)
        if key not in self._on:
            self._on[key] = [f.to(device=x.device, dtype=x.dtype) for f in self.factors]
        return (apply_hadamard(x, self._on[key]),) + tuple(args[1:])


def online_hadamard_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that rotate their input online."""
    return [n for n, m in model.named_modules()
            if any(isinstance(h, OnlineHadamard) for h in m._forward_pre_hooks.values())]


def _llama_parts(model: nn.Module):
    inner = getattr(model, "model", None)
    for attr in ("embed_tokens", "norm"):
        if inner is None or not hasattr(inner, attr):
            raise ValueError(f"{type(model).__name__} has no .model.{attr}: expected a Llama-family causal LM")
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        raise ValueError(f"{type(model).__name__} has no .lm_head Linear: expected a Llama-family causal LM")
    return inner, decoder_blocks(model)


def _norm_weight(norm: nn.Module, name: str) -> torch.Tensor:
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor) or getattr(norm, "bias", None) is not None:
        raise ValueError(f"{name}: expected an RMSNorm with a weight and no bias, got {type(norm).__name__}")
    return w


def _check_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(f"{name} contains NaN or Inf: a rotation would spread it over every channel")


def _untie_lm_head(model: nn.Module) -> None:
    inner = model.model
    if model.lm_head.weight is inner.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(inner.embed_tokens.weight.detach().clone())
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False


@torch.no_grad()
def _scale_columns(lin: nn.Linear, gamma: torch.Tensor) -> None:
    lin.weight.copy_((lin.weight.double() * gamma.double()[None, :]).to(lin.weight.dtype))


@torch.no_grad()
def fold_norms_(model: nn.Module) -> None:
    """Fold every RMSNorm scale into the linears that read it (and the final norm into the untied LM head)."""
    inner, blocks = _llama_parts(model)
    _check_finite(model)
    pairs = []
    for i, block in enumerate(blocks):
        pairs.append((_norm_weight(block.input_layernorm, f"model.layers.{i}.input_layernorm"),
                      [block.get_submodule(n) for n in READERS[:3]]))
        pairs.append((_norm_weight(block.post_attention_layernorm, f"model.layers.{i}.post_attention_layernorm"),
                      [block.get_submodule(n) for n in READERS[3:]]))
    _untie_lm_head(model)
    pairs.append((_norm_weight(inner.norm, "model.norm"), [model.lm_head]))
    for gamma, lins in pairs:
        for lin in lins:
            _scale_columns(lin, gamma)
        gamma.fill_(1.0)


def _rotation(n: int, seed: int) -> torch.Tensor:
    return random_signs(n, seed)[:, None] * hadamard_matrix(n)  # diag(s) H / √n, orthogonal, float64


@torch.no_grad()
def rotate_residual_(model: nn.Module, Q: torch.Tensor) -> None:
    """Rotate the residual stream by the orthogonal ``Q`` (hidden, hidden); norms must be folded first."""
    inner, blocks = _llama_parts(model)
    hidden = inner.embed_tokens.weight.shape[1]
    if Q.shape != (hidden, hidden):
        raise ValueError(f"Q has shape {tuple(Q.shape)}, the residual stream is {hidden} wide")
    Q = Q.detach().to(device=inner.embed_tokens.weight.device, dtype=torch.float64)
    eye = torch.eye(hidden, dtype=torch.float64, device=Q.device)
    if not torch.allclose(Q @ Q.T, eye, atol=1e-8):
        raise ValueError("Q is not orthogonal (Q Qᵀ ≠ I): the rotated model would compute something else")
    norms = [inner.norm] + [n for b in blocks for n in (b.input_layernorm, b.post_attention_layernorm)]
    if any(not bool((_norm_weight(n, "norm") == 1).all()) for n in norms):
        raise ValueError("an RMSNorm still has a scale ≠ 1: call fold_norms_(model) first "
                         "(only a scale-free RMSNorm commutes with the rotation)")
    if model.lm_head.weight is inner.embed_tokens.weight:
        raise ValueError("the LM head is tied to the embedding: call fold_norms_(model) first (it unties them)")

    def right(w: torch.Tensor) -> None:  # W ← W Q (readers: y = x Wᵀ reads x Q)
        w.copy_((w.double() @ Q).to(w.dtype))

    right(inner.embed_tokens.weight)  # rows are the residual vectors of the tokens
    right(model.lm_head.weight)
    for block in blocks:
        for n in READERS:
            right(block.get_submodule(n).weight)
        for n in WRITERS:
            lin = block.get_submodule(n)
            lin.weight.copy_((Q.T @ lin.weight.double()).to(lin.weight.dtype))  # W ← Qᵀ W
            if lin.bias is not None:
                lin.bias.copy_((lin.bias.double() @ Q).to(lin.bias.dtype))


@torch.no_grad()
def add_online_hadamard_(model: nn.Module, layers: tuple[str, ...] = ONLINE) -> None:
    """``W ← W H`` and a pre-hook ``x ↦ x H`` on each named linear of every block."""
    _, blocks = _llama_parts(model)
    lins = []
    for i, block in enumerate(blocks):
        for n in layers:
            lin = block.get_submodule(n)
            if any(isinstance(h, OnlineHadamard) for h in lin._forward_pre_hooks.values()):
                raise ValueError(f"model.layers.{i}.{n} already rotates its input online")
            if not is_hadamard_order(lin.in_features):
                hadamard_factors(lin.in_features)  # raises, naming the order
            lins.append(lin)
    for lin in lins:
        hook = OnlineHadamard(lin.in_features)
        h = hadamard_matrix(lin.in_features).to(lin.weight.device)
        lin.weight.copy_((lin.weight.double() @ h).to(lin.weight.dtype))
        lin.register_forward_pre_hook(hook)


def quarot_(model: nn.Module, seed: int = 0, online: tuple[str, ...] = ONLINE) -> None:
    """QuaRot in place: fold the norms, rotate the residual by a seeded randomized Hadamard, rotate ``online``.

    The float model computes the same function (to float rounding): tested on SmolLM2. Errors
    (not a Llama-family model, a width that is no Hadamard order, NaN weights, already rotated)
    are raised before any weight changes.
    """
    inner, blocks = _llama_parts(model)
    hidden = inner.embed_tokens.weight.shape[1]
    if not is_hadamard_order(hidden):
        hadamard_factors(hidden)  # raises, naming the order
    for i, block in enumerate(blocks):
        for n in online:
            lin = block.get_submodule(n)
            if not isinstance(lin, nn.Linear):
                raise ValueError(f"model.layers.{i}.{n} is a {type(lin).__name__}, not a Linear")
            if not is_hadamard_order(lin.in_features):
                hadamard_factors(lin.in_features)
    if online_hadamard_layers(model):
        raise ValueError("the model already has online Hadamards: it was rotated before")
    _check_finite(model)
    fold_norms_(model)
    rotate_residual_(model, _rotation(hidden, seed))
    add_online_hadamard_(model, online)
