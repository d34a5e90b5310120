"""Walk a Llama-family model's decoder blocks and (fake-)quantize their linear layers.

By default only the projections inside the decoder blocks are quantized: the
token embedding, the norms and the LM head stay in floating point (the usual
practice of GPTQ, AWQ and bitsandbytes; quantizing the LM head of a small model
costs far more accuracy than it saves memory).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["decoder_blocks", "decoder_linears", "fake_quantized", "fake_quantized_inputs", "replaced_linears"]


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks (``model.model.layers`` in Hugging Face Llama models)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no .model.layers: expected a Llama-family causal LM"
        )
    return layers


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{'model.layers.0.self_attn.q_proj': Linear, ...}`` for every linear in the decoder blocks."""
    blocks = decoder_blocks(model)
    prefix = "model.layers" if hasattr(model, "model") else "layers"
    return {
        f"{prefix}.{i}.{name}": mod
        for i, block in enumerate(blocks)
        for name, mod in block.named_modules()
        if isinstance(mod, nn.Linear)
    }


@contextlib.contextmanager
def fake_quantized(
    model: nn.Module,
    quantize_fn: Callable[[torch.Tensor], torch.Tensor],
    only: Callable[[str], bool] | None = None,
) -> Iterator[nn.Module]:
    """Temporarily replace each decoder linear weight ``w`` by ``quantize_fn(w)``.

    ``quantize_fn`` maps a weight ``(out_features, in_features)`` to its
    dequantized copy of the same shape, e.g. ``lambda w: fake_quant(w, spec)``.
    The original weights are restored on exit, even after an error.
    """
    linears = {n: m for n, m in decoder_linears(model).items() if only is None or only(n)}
    saved = {n: m.weight.detach().clone() for n, m in linears.items()}
    try:
        with torch.no_grad():
            for m in linears.values():
                m.weight.copy_(quantize_fn(m.weight.detach()))
        yield model
    finally:
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(saved[n])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


@contextlib.contextmanager
def replaced_linears(
    model: nn.Module,
    make_module: Callable[[str, nn.Linear], nn.Module],
    only: Callable[[str], bool] | None = None,
) -> Iterator[nn.Module]:
    """Temporarily swap each decoder linear for ``make_module(name, linear)`` (e.g. a W8A8Linear).

    The original modules are put back on exit, even after an error.
    """
    linears = {n: m for n, m in decoder_linears(model).items() if only is None or only(n)}
    try:
        for n, m in linears.items():
            _set_submodule(model, n, make_module(n, m))
        yield model
    finally:
        for n, m in linears.items():
            _set_submodule(model, n, m)


@contextlib.contextmanager
def fake_quantized_inputs(
    model: nn.Module,
    quantize_fn: Callable[[torch.Tensor], torch.Tensor],
    only: Callable[[str], bool] | None = None,
) -> Iterator[nn.Module]:
    """Temporarily pass the input of each decoder linear through ``quantize_fn`` (activation fake-quant).

    ``quantize_fn`` maps an activation ``(..., in_features)`` to its dequantized copy, e.g.
    ``lambda x: fake_quant(x, QuantSpec(4, granularity=PerToken()))`` for W·A4 emulation.
    Registered as forward pre-hooks after any already on the layer (so a rotation hook runs
    first); removed on exit, even after an error.
    """
    linears = {n: m for n, m in decoder_linears(model).items() if only is None or only(n)}
    handles = []
    try:
        for m in linears.values():
            handles.append(m.register_forward_pre_hook(lambda mod, args: (quantize_fn(args[0]),) + tuple(args[1:])))
        yield model
    finally:
        for h in handles:
            h.remove()
