"""Quantization configs as data: one frozen dataclass per method, validated when it is built.

A config names *what* to do; :func:`qtutor.nn.convert` and
:func:`qtutor.pipeline.compare.quantize_copy` choose the code path by the
config's type, never by a string (torchao's ``quantize_(model, Int4WeightOnlyConfig())``).

=================  ====================================  =========================
config             method                                module after ``convert``
=================  ====================================  =========================
``RTNConfig``      round-to-nearest on the shared grid   ``W4A16Linear``
``GPTQConfig``     GPTQ (``qtutor.methods.gptq``)        ``W4A16Linear``
``AWQConfig``      AWQ (``qtutor.methods.awq``)          ``W4A16Linear``
``NF4Config``      NF4 / FP4 (``qtutor.methods.nf4``)    ``NF4Linear``
``LLMInt8Config``  LLM.int8() (``methods.llm_int8``)     ``Int8LinearLt``
``W8A8Config``     int8 weights and activations          ``W8A8Linear``
``FP8Config``      fp8 e4m3 weights and activations      ``FP8Linear``
=================  ====================================  =========================

An invalid value fails at construction with a message naming the field, the
value and what is allowed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Union

from .methods.awq import AWQConfig
from .methods.gptq import GPTQConfig
from .methods.nf4 import NF4Config
from .primitives.spec import check_n_bits_group_size

__all__ = [
    "RTNConfig", "GPTQConfig", "AWQConfig", "NF4Config", "LLMInt8Config", "W8A8Config", "FP8Config",
    "QuantConfig", "WEIGHT_ONLY_CONFIGS",
]


@dataclass(frozen=True)
class RTNConfig:
    """Round-to-nearest on the grid GPTQ and AWQ share (:func:`qtutor.primitives.rtn_grid_quantize`)."""

    n_bits: int = 4
    group_size: int | None = 128  # None: one scale per output row
    symmetric: bool = False

    def __post_init__(self) -> None:
        check_n_bits_group_size(self.n_bits, self.group_size)  # the one check GPTQConfig and AWQConfig run too
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric={self.symmetric!r}: must be True or False")


@dataclass(frozen=True)
class LLMInt8Config:
    """LLM.int8(): activation columns with any ``|x| ≥ threshold`` stay in fp16 (0 turns that off)."""

    threshold: float = 6.0

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or math.isinf(t):
            raise ValueError(f"threshold={t!r}: must be a finite number ≥ 0 (0 turns the outlier path off)")


@dataclass(frozen=True)
class W8A8Config:
    """int8 weights per output channel; activations per token at run time (``static_scales=None``) or
    one calibrated scale per layer (``{layer name: scale}``, e.g. from an observer)."""

    static_scales: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.static_scales is None:
            return
        if not isinstance(self.static_scales, Mapping):
            raise ValueError(f"static_scales={type(self.static_scales).__name__}: must be a mapping "
                             "{layer name: positive scale} or None for dynamic per-token scales")
        scales = {}
        for name, s in self.static_scales.items():
            try:
                v = float(s)  # observers hand back Python, NumPy or 0-d torch numbers
            except (TypeError, ValueError):
                v = float("nan")
            if isinstance(s, bool) or not (v > 0 and math.isfinite(v)):
                raise ValueError(f"static_scales[{name!r}]={s!r}: must be a finite number > 0")
            scales[name] = v
        # frozen means frozen: a later change of the caller's dict must not change this config
        object.__setattr__(self, "static_scales", MappingProxyType(scales))


@dataclass(frozen=True)
class FP8Config:
    """W8A8 in fp8 e4m3: one scale per output channel for weights, per token (at run time) for activations.

    Nothing to choose yet: the format is fixed (e4m3, absmax scaled to 448). A field here later
    (e.g. static activation scales) keeps old calls working.
    """


QuantConfig = Union[RTNConfig, GPTQConfig, AWQConfig, NF4Config, LLMInt8Config, W8A8Config, FP8Config]
WEIGHT_ONLY_CONFIGS = (RTNConfig, GPTQConfig, AWQConfig)  # the grid-quantized ones: W4A16Linear
