"""W·A· experiments on the real model: outlier transforms (SmoothQuant, QuaRot), weight and activation formats.

One code path for notebook 16's live cells and ``benchmarks/rotations_quality.py``'s recorded table:

* :func:`transformed_copy` — a deep copy of the float model, unchanged (``"none"``), smoothed
  (``"smoothquant"``, α = 0.5 on the q/k/v and gate/up inputs, as notebook 05) or rotated (``"quarot"``);
  each computes the float model's function.
* :func:`quantize_weights_` — every decoder linear's weight, in place, by RTN in one of
  :data:`WEIGHT_FORMATS` or by GPTQ (symmetric, one scale per output row, as QuaRot's W4 setting).
* :func:`score` — KL divergence, top-1 agreement and perplexity against float reference logits,
  with the activations of every decoder linear fake-quantized by one of :data:`ACT_FORMATS`
  (after any online Hadamard: the quantizer sees what a kernel would).

Activations are quantized dynamically (scales from each token at run time), symmetric, no clipping.
Embeddings, norms and the LM head stay in float, as in QuaRot's and SmoothQuant's tables.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..config import GPTQConfig
from ..eval import ReferenceLogits, logit_agreement
from ..methods.fp8_scaling import fp8_fake_quant
from ..methods.mx import bits_per_weight, mx_fake_quant, nvfp4_fake_quant
from ..methods.nf4 import NF4Config, dequantize_4bit, quantize_4bit
from ..methods.quarot import quarot_
from ..methods.smoothquant import smooth_model_
from ..model.capture import OutlierStats, observe_linear_inputs
from ..model.walk import decoder_linears, fake_quantized, fake_quantized_inputs
from ..primitives import PerChannel, PerGroup, PerToken, QuantSpec, fake_quant
from .gptq import gptq_quantize_model

__all__ = ["TRANSFORMS", "WEIGHT_FORMATS", "ACT_FORMATS", "weight_bits", "transformed_copy",
           "quantize_weights_", "score"]

TRANSFORMS = ("none", "smoothquant", "quarot")


def _int(bits: int, granularity) -> Callable[[torch.Tensor], torch.Tensor]:
    spec = QuantSpec(bits, granularity=granularity)
    return lambda w: fake_quant(w, spec)


def _nf4(w: torch.Tensor) -> torch.Tensor:  # qtutor's NF4 (bitsandbytes' codes, bit for bit) runs on the CPU
    return dequantize_4bit(quantize_4bit(w.cpu(), NF4Config())).to(device=w.device, dtype=w.dtype).reshape(w.shape)


def _rows(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply a 2-D quantizer to an activation ``(..., K)`` row by row."""
    return lambda x: fn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


# name -> (fake-quantizer of a weight (N, K), bits per weight counting every scale; None where it depends on K)
WEIGHT_FORMATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "int8": _int(8, PerChannel(0)),
    "fp8_e4m3": lambda w: fp8_fake_quant(w, "e4m3", "channel"),
    "int4": _int(4, PerChannel(0)),
    "int4_g32": _int(4, PerGroup(32)),
    "nf4": _nf4,
    "mxfp8_e4m3": lambda w: mx_fake_quant(w, "mxfp8_e4m3"),
    "mxint8": lambda w: mx_fake_quant(w, "mxint8"),
    "mxfp6_e2m3": lambda w: mx_fake_quant(w, "mxfp6_e2m3"),
    "mxfp4": lambda w: mx_fake_quant(w, "mxfp4"),
    "nvfp4": lambda w: nvfp4_fake_quant(w),
}

ACT_FORMATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "int8": _int(8, PerToken()),
    "fp8_e4m3": lambda x: fp8_fake_quant(x, "e4m3", "token"),
    "int6": _int(6, PerToken()),
    "int4": _int(4, PerToken()),
    "int4_g32": _rows(_int(4, PerGroup(32))),
    "mxfp8_e4m3": lambda x: mx_fake_quant(x, "mxfp8_e4m3"),
    "mxfp4": lambda x: mx_fake_quant(x, "mxfp4"),
    "nvfp4": lambda x: nvfp4_fake_quant(x.reshape(-1, x.shape[-1])).reshape(x.shape),
}


def weight_bits(fmt: str, rows: int, cols: int) -> float:
    """Bits per weight of an ``(rows, cols)`` weight in ``fmt``, every scale counted (fp16 scales for int)."""
    if fmt in ("int8", "fp8_e4m3"):
        return 8 + 32 / cols  # one float32 scale per row
    if fmt == "int4":
        return 4 + 16 / cols  # one fp16 scale per row (symmetric)
    if fmt == "int4_g32":
        return 4 + 16 / 32
    if fmt == "nf4":
        c = NF4Config()
        return 4 + 8 / c.blocksize + 32 / (c.blocksize * c.dq_blocksize)  # double-quantized absmax
    return bits_per_weight(fmt, rows * cols)


def transformed_copy(model: nn.Module, transform: str, calib: torch.Tensor | None = None,
                     alpha: float = 0.5, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with ``transform`` applied (the float function is unchanged)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform={transform!r}: allowed {TRANSFORMS}")
    m = copy.deepcopy(model)
    if transform == "smoothquant":
        if calib is None:
            raise ValueError("transform='smoothquant' needs calib: token ids (n, seq_len) to measure max|X| on")
        stats = observe_linear_inputs(m, calib.split(1), lambda name, linear: OutlierStats())
        smooth_model_(m, {n: s.absmax for n, s in stats.items()}, alpha=alpha)
    elif transform == "quarot":
        quarot_(m, seed=seed)
    return m


def quantize_weights_(model: nn.Module, fmt: str, method: str = "rtn", calib: torch.Tensor | None = None,
                      progress: bool = False) -> None:
    """Quantize every decoder linear's weight in place: RTN in ``fmt``, or ``method='gptq'`` (``fmt='int4'``)."""
    if method == "gptq":
        if fmt != "int4":
            raise ValueError(f"fmt={fmt!r} with method='gptq': only 'int4' (symmetric, per output row)")
        if calib is None:
            raise ValueError("method='gptq' needs calib: token ids (n, seq_len)")
        gptq_quantize_model(model, calib, GPTQConfig(n_bits=4, group_size=None, symmetric=True), progress=progress)
        return
    if method != "rtn":
        raise ValueError(f"method={method!r}: allowed 'rtn', 'gptq'")
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"fmt={fmt!r}: allowed {sorted(WEIGHT_FORMATS)}")
    with fake_quantized(model, WEIGHT_FORMATS[fmt]):  # computes every quantized weight, then keeps them
        quantized = {n: m.weight.detach().clone() for n, m in decoder_linears(model).items()}
    with torch.no_grad():
        for n, m in decoder_linears(model).items():
            m.weight.copy_(quantized[n])


@torch.no_grad()
def score(model: nn.Module, reference: ReferenceLogits, act: str | None = None, batch_size: int = 1) -> dict[str, float]:
    """``{'kl', 'top1', 'perplexity'}`` of ``model`` with every decoder linear's input fake-quantized by ``act``."""
    if act is None:
        return logit_agreement(model, reference, batch_size=batch_size, with_perplexity=True)
    if act not in ACT_FORMATS:
        raise ValueError(f"act={act!r}: allowed None or {sorted(ACT_FORMATS)}")
    with fake_quantized_inputs(model, ACT_FORMATS[act]):
        return logit_agreement(model, reference, batch_size=batch_size, with_perplexity=True)
