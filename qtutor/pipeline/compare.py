"""Run RTN, GPTQ (± act-order) and AWQ on a fresh copy of a model and measure each the same way.

The notebooks' comparison tables and ``benchmarks/quality_table.py`` are built
from ``weight_only_row``, so the live and the recorded numbers come from one code path.
The method is the config's type (``RTNConfig``, ``GPTQConfig(act_order=True)``,
``AWQConfig``); its row label (``method_label``) is the name the tables show.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AWQConfig, GPTQConfig, RTNConfig
from ..eval import EvalConfig, ReferenceLogits, logit_agreement, perplexity
from ..model.walk import decoder_linears
from ..primitives.grid import rtn_grid_quantize
from .awq import awq_quantize_model
from .gptq import gptq_quantize_model

__all__ = ["WeightFormat", "WeightOnlyConfig", "method_label", "method_configs", "quantize_copy", "model_size_mb",
           "weight_only_row"]

WeightOnlyConfig = RTNConfig | GPTQConfig | AWQConfig


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


def _check_config(config: object) -> None:
    if not isinstance(config, (RTNConfig, GPTQConfig, AWQConfig)):
        raise ValueError(f"config={config!r}: a weight-only comparison takes RTNConfig, GPTQConfig or AWQConfig")


def method_label(config: WeightOnlyConfig) -> str:
    """The name a table shows: ``"RTN"``, ``"GPTQ"``, ``"GPTQ act-order"`` or ``"AWQ"``."""
    _check_config(config)
    if isinstance(config, GPTQConfig):
        return "GPTQ act-order" if config.act_order else "GPTQ"
    return "RTN" if isinstance(config, RTNConfig) else "AWQ"


def method_configs(fmt: WeightFormat) -> list[WeightOnlyConfig]:
    """The four methods the course compares, in ``fmt``: RTN, GPTQ, GPTQ with act-order, AWQ."""
    n, g = fmt.n_bits, fmt.group_size
    return [RTNConfig(n, g), GPTQConfig(n, g), GPTQConfig(n, g, act_order=True), AWQConfig(n, g)]


def quantize_copy(model: nn.Module, config: WeightOnlyConfig, calib: torch.Tensor,
                  batch_size: int = 4, progress: bool = False) -> tuple[nn.Module, float]:
    """A quantized (dequantized-in-place) deep copy of ``model`` and the wall time of quantizing it (s).

    ``progress`` shows a per-block bar for GPTQ and AWQ (:func:`qtutor.progress.progress`).
    """
    _check_config(config)
    model = copy.deepcopy(model)
    start = time.perf_counter()
    if isinstance(config, RTNConfig):
        with torch.no_grad():
            for lin in decoder_linears(model).values():
                qw = rtn_grid_quantize(lin.weight, config.n_bits, config.group_size, config.symmetric)
                lin.weight.copy_(qw.dequantize())
    elif isinstance(config, GPTQConfig):
        gptq_quantize_model(model, calib, config, batch_size=batch_size, progress=progress)
    else:
        awq_quantize_model(model, calib, config, batch_size=batch_size, progress=progress)
    return model, time.perf_counter() - start


def model_size_mb(model: nn.Module, fmt: WeightFormat | None) -> float:
    """Weights in MB (10⁶ bytes): decoder linears in ``fmt`` (16-bit if None), everything else in 16 bits."""
    linears = decoder_linears(model)
    quantized = sum((fmt.bits_per_weight(m.in_features) if fmt else 16) * m.weight.numel() for m in linears.values())
    params = {id(p): p.numel() for p in model.parameters()}  # tied embedding counted once
    other = sum(params.values()) - sum(m.weight.numel() for m in linears.values())
    return (quantized + 16 * other) / 8 / 1e6


def weight_only_row(model: nn.Module, tokenizer, config: WeightOnlyConfig, calib: torch.Tensor,
                    reference: ReferenceLogits, eval_config: EvalConfig, batch_size: int = 4,
                    progress: bool = False) -> dict:
    """One row of the comparison: perplexity, KL and top-1 vs float, size, bits per weight, quantization time."""
    quantized, seconds = quantize_copy(model, config, calib, batch_size, progress)
    fmt, method = WeightFormat(config.n_bits, config.group_size), method_label(config)
    agreement = logit_agreement(quantized, reference)
    n = sum(m.weight.numel() for m in decoder_linears(model).values())
    bpw = sum(fmt.bits_per_weight(m.in_features) * m.weight.numel() for m in decoder_linears(model).values()) / n
    return {"method": method, "format": fmt.label, "n_bits": fmt.n_bits, "group_size": fmt.group_size,
            "perplexity": perplexity(quantized, tokenizer, eval_config), "kl": agreement["kl"],
            "top1": agreement["top1"], "bits_per_weight": bpw, "size_mb": model_size_mb(model, fmt),
            "quantize_s": seconds}
