"""Round-to-nearest (RTN): min-max scales, no calibration data, every granularity.

The baseline every method in the course is compared against.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..primitives import QuantSpec, fake_quant

__all__ = ["rtn_quantize_fn"]


def rtn_quantize_fn(spec: QuantSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``w -> dequantize(quantize(w))`` for use with ``qtutor.model.fake_quantized``."""

    def quantize_fn(w: torch.Tensor) -> torch.Tensor:
        return fake_quant(w, spec)

    quantize_fn.__name__ = f"rtn[{spec.describe()}]"
    return quantize_fn
