"""``convert(model, config)``: swap every decoder linear for the quantized module its config names.

The second of the two phases (calibrate/quantize, then convert), as torchao's
``quantize_(model, config)``: the config's *type* picks the module.

* ``RTNConfig``, ``NF4Config``, ``LLMInt8Config``, ``W8A8Config``, ``FP8Config``
  need no data: each linear is quantized from its own weight.
* ``GPTQConfig`` and ``AWQConfig`` need calibration, which is the pipeline's job
  (a layer above this one): run :func:`qtutor.pipeline.gptq_quantize_model` or
  :func:`~qtutor.pipeline.awq_quantize_model` on the model first and pass what it
  returned as ``results`` (``{name: QuantizedWeight}``). For AWQ convert the very
  model the pipeline ran on: AWQ folded its scales into that model's norms.

Everything is checked and every new module is built before the first one is
swapped in: an error leaves the model exactly as it was.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import (
    AWQConfig, FP8Config, GPTQConfig, LLMInt8Config, NF4Config, QuantConfig, RTNConfig, W8A8Config,
)
from ..methods.w8a8 import ActQuant
from ..model.walk import decoder_linears
from ..primitives.grid import QuantizedWeight
from .fp8 import FP8Linear
from .llm_int8 import Int8LinearLt
from .nf4 import NF4Linear
from .w4a16 import PACKED_BITS, W4A16Linear
from .w8a8 import W8A8Linear

__all__ = ["convert", "MODULES"]

# the module each config becomes: the one table convert() dispatches on
MODULES: dict[type, type[nn.Module]] = {
    RTNConfig: W4A16Linear, GPTQConfig: W4A16Linear, AWQConfig: W4A16Linear, NF4Config: NF4Linear,
    LLMInt8Config: Int8LinearLt, W8A8Config: W8A8Linear, FP8Config: FP8Linear,
}


def _builder(config: QuantConfig, results: dict[str, QuantizedWeight] | None) -> Callable[[str, nn.Linear], nn.Module]:
    """``build(name, linear)`` -> the quantized module for one layer."""
    if isinstance(config, (GPTQConfig, AWQConfig)):
        return lambda name, lin: W4A16Linear.from_quantized(results[name], lin.bias)
    if isinstance(config, RTNConfig):
        return lambda name, lin: W4A16Linear.from_linear(lin, config)
    if isinstance(config, NF4Config):
        return lambda name, lin: NF4Linear.from_linear(lin, config)
    if isinstance(config, LLMInt8Config):
        return lambda name, lin: Int8LinearLt.from_linear(lin, config.threshold)
    if isinstance(config, W8A8Config):
        scales = config.static_scales
        return lambda name, lin: W8A8Linear.from_linear(
            lin, ActQuant() if scales is None else ActQuant(static_scale=scales[name]))
    return lambda name, lin: FP8Linear.from_linear(lin, config)


def _check_results(results: dict[str, QuantizedWeight], linears: dict[str, nn.Linear], config) -> None:
    missing = sorted(set(linears) - set(results))
    if missing:
        raise ValueError(f"results has no quantized weight for {len(missing)} decoder linears, e.g. {missing[0]}")
    for name, lin in linears.items():
        qw = results[name]
        if not isinstance(qw, QuantizedWeight):
            raise ValueError(f"results[{name!r}] is a {type(qw).__name__}, expected a QuantizedWeight")
        if tuple(qw.shape) != tuple(lin.weight.shape):
            raise ValueError(f"results[{name!r}] has shape {tuple(qw.shape)}, the layer {tuple(lin.weight.shape)}")
        if (qw.n_bits, qw.group_size) != (config.n_bits, config.group_size):
            raise ValueError(f"results[{name!r}] has n_bits={qw.n_bits}, group_size={qw.group_size}; "
                             f"the config n_bits={config.n_bits}, group_size={config.group_size}")


def convert(model: nn.Module, config: QuantConfig, *, results: dict[str, QuantizedWeight] | None = None,
            only: Callable[[str], bool] | None = None) -> nn.Module:
    """Replace every decoder linear of ``model`` (those ``only(name)`` accepts) by ``config``'s module, in place.

    Returns ``model``. ``results``: for GPTQ and AWQ only, and needed there (see the module docstring).
    Raises ``ValueError`` — with the model untouched — for an unknown config, missing or
    mismatched results, a missing static scale, or any layer that cannot be quantized.
    """
    if type(config) not in MODULES:
        names = ", ".join(t.__name__ for t in MODULES)
        raise ValueError(f"config={config!r}: convert takes one of {names}")
    calibrated = isinstance(config, (GPTQConfig, AWQConfig))
    if not calibrated and results is not None:
        raise ValueError(f"results= is for GPTQConfig and AWQConfig; {type(config).__name__} quantizes each "
                         "layer from its own weight")
    if calibrated and results is None:
        raise ValueError(f"{type(config).__name__} needs results= ({{name: QuantizedWeight}}, what "
                         "qtutor.pipeline's gptq_quantize_model / awq_quantize_model returned for this model)")
    linears = {n: m for n, m in decoder_linears(model).items() if only is None or only(n)}
    if not linears:
        raise ValueError("the model has no nn.Linear left in its decoder blocks to convert (converted already?)")
    if isinstance(config, (RTNConfig, GPTQConfig, AWQConfig)) and config.n_bits not in PACKED_BITS:
        raise ValueError(f"n_bits={config.n_bits}: {MODULES[type(config)].__name__} packs {PACKED_BITS} bits; "
                         "fake-quantize other widths (qtutor.pipeline.compare.quantize_copy)")
    if isinstance(config, W8A8Config) and config.static_scales is not None:
        missing = sorted(set(linears) - set(config.static_scales))
        if missing:
            raise ValueError(f"static_scales has no calibrated activation scale for {missing[0]} "
                             f"({len(missing)} layers missing)")
    if results is not None:
        _check_results(results, linears, config)
    build = _builder(config, results)
    new: dict[str, nn.Module] = {}
    for name, lin in linears.items():
        try:
            new[name] = build(name, lin).to(lin.weight.device)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
    # nothing below can fail: the model changes only now
    for name, module in new.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    return model
