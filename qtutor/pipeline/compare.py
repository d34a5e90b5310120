"""Run RTN, GPTQ (± act-order) and AWQ on a fresh copy of a model and measure each the same way.

The notebooks' comparison tables and ``benchmarks/quality_table.py`` are built
from ``weight_only_row``, so the live and the recorded numbers come from one code path.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..eval import EvalConfig, ReferenceLogits, logit_agreement, perplexity
from ..methods.gptq import GPTQConfig
from ..primitives.grid import rtn_grid_quantize
from ..model.walk import decoder_linears
from .awq import AWQConfig, awq_quantize_model
from .gptq import gptq_quantize_model

__all__ = ["WeightFormat", "METHODS", "quantize_copy", "model_size_mb", "weight_only_row"]

METHODS = ("RTN", "GPTQ", "GPTQ act-order", "AWQ")


@dataclass(frozen=True)
class WeightFormat:
    """A weight-only format: ``n_bits`` codes, one fp16 scale and one b-bit zero-point per group."""

    n_bits: int
    group_size: int | None  # None: per output channel

    @property
    def label(self) -> str:
        return f"W{self.n_bits} " + (f"g{self.group_size}" if self.group_size else "per-channel")

    def bits_per_weight(self, in_features: int) -> float:
        """Codes plus an fp16 scale and a packed b-bit zero-point per group (the GPTQ/AWQ checkpoints)."""
        groups = -(-in_features // self.group_size) if self.group_size else 1
        return self.n_bits + groups * (16 + self.n_bits) / in_features


def quantize_copy(model: nn.Module, method: str, fmt: WeightFormat, calib: torch.Tensor,
                  batch_size: int = 4, progress: bool = False) -> tuple[nn.Module, float]:
    """A quantized (dequantized-in-place) deep copy of ``model`` and the wall time of quantizing it (s).

    ``progress`` shows a per-block bar for GPTQ and AWQ (:func:`qtutor.progress.progress`).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    model = copy.deepcopy(model)
    start = time.perf_counter()
    if method == "RTN":
        with torch.no_grad():
            for lin in decoder_linears(model).values():
                lin.weight.copy_(rtn_grid_quantize(lin.weight, fmt.n_bits, fmt.group_size).dequantize())
    elif method.startswith("GPTQ"):
        cfg = GPTQConfig(n_bits=fmt.n_bits, group_size=fmt.group_size, act_order=method.endswith("act-order"))
        gptq_quantize_model(model, calib, cfg, batch_size=batch_size, progress=progress)
    else:
        awq_quantize_model(model, calib, AWQConfig(n_bits=fmt.n_bits, group_size=fmt.group_size),
                           batch_size=batch_size, progress=progress)
    return model, time.perf_counter() - start


def model_size_mb(model: nn.Module, fmt: WeightFormat | None) -> float:
    """Weights in MB (10⁶ bytes): decoder linears in ``fmt`` (16-bit if None), everything else in 16 bits."""
    linears = decoder_linears(model)
    quantized = sum((fmt.bits_per_weight(m.in_features) if fmt else 16) * m.weight.numel() for m in linears.values())
    params = {id(p): p.numel() for p in model.parameters()}  # tied embedding counted once
    other = sum(params.values()) - sum(m.weight.numel() for m in linears.values())
    return (quantized + 16 * other) / 8 / 1e6


def weight_only_row(model: nn.Module, tokenizer, method: str, fmt: WeightFormat, calib: torch.Tensor,
                    reference: ReferenceLogits, eval_config: EvalConfig, batch_size: int = 4,
                    progress: bool = False) -> dict:
    """One row of the comparison: perplexity, KL and top-1 vs float, size, bits per weight, quantization time."""
    quantized, seconds = quantize_copy(model, method, fmt, calib, batch_size, progress)
    agreement = logit_agreement(quantized, reference)
    n = sum(m.weight.numel() for m in decoder_linears(model).values())
    bpw = sum(fmt.bits_per_weight(m.in_features) * m.weight.numel() for m in decoder_linears(model).values()) / n
    return {"method": method, "format": fmt.label, "n_bits": fmt.n_bits, "group_size": fmt.group_size,
            "perplexity": perplexity(quantized, tokenizer, eval_config), "kl": agreement["kl"],
            "top1": agreement["top1"], "bits_per_weight": bpw, "size_mb": model_size_mb(model, fmt),
            "quantize_s": seconds}
