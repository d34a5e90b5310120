"""Error metrics and storage cost of a quantized tensor."""
from __future__ import annotations

import math

import torch

from .spec import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec

__all__ = [
    "mse",
    "sqnr_db",
    "max_abs_error",
    "relative_error",
    "error_report",
    "n_qparams",
    "bits_per_weight",
]


def _pair(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != x_hat.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_hat has {tuple(x_hat.shape)}")
    return x.double(), x_hat.double()


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error."""
    x, x_hat = _pair(x, x_hat)
    return float(((x - x_hat) ** 2).mean())


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(Σx² / Σ(x − x̂)²)`` in dB (inf if exact)."""
    x, x_hat = _pair(x, x_hat)
    noise = float(((x - x_hat) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((x**2).sum()) / noise)


def max_abs_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Largest ``|x − x̂|``."""
    x, x_hat = _pair(x, x_hat)
    return float((x - x_hat).abs().max()) if x.numel() else 0.0


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``‖x − x̂‖ / ‖x‖`` (Frobenius norms)."""
    x, x_hat = _pair(x, x_hat)
    den = float(x.norm())
    return 0.0 if den == 0 else float((x - x_hat).norm()) / den


def error_report(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """All four metrics in one dict (for DataFrames)."""
    return {
        "mse": mse(x, x_hat),
        "sqnr_db": sqnr_db(x, x_hat),
        "max_abs_error": max_abs_error(x, x_hat),
        "relative_error": relative_error(x, x_hat),
    }


def n_qparams(shape: tuple[int, ...], spec: QuantSpec) -> int:
    """How many (scale, zero-point) pairs a tensor of ``shape`` needs under ``spec``."""
    g = spec.granularity
    numel = math.prod(shape)
    if isinstance(g, PerTensor):
        return 1
    if isinstance(g, PerChannel):
        return shape[g.axis]
    if isinstance(g, PerToken):
        return numel // shape[-1]
    if isinstance(g, PerGroup):
        # a short last group (576 = 4.5 x 128) still needs its own pair, as in fake_quant
        return numel // shape[g.axis] * -(-shape[g.axis] // g.group_size)
    raise ValueError(f"unknown granularity {g!r}")


def bits_per_weight(
    shape: tuple[int, ...],
    spec: QuantSpec,
    scale_bits: int = 16,
    zero_point_bits: int | None = None,
) -> float:
    """Exact storage cost per element, scales and zero-points included.

    Args:
        shape: tensor shape.
        spec: the scheme.
        scale_bits: bits of each stored scale (16 for fp16 scales).
        zero_point_bits: bits of each stored zero-point; default ``n_bits`` for
            integer zero-points (packed like the codes, as GPTQ's ``qzeros``)
            and 16 for float offsets (fp16, as GGUF's ``m``).
    """
    numel = math.prod(shape)
    if numel == 0:
        raise ValueError(f"shape={shape}: empty tensor has no bits per weight")
    if zero_point_bits is None:
        zero_point_bits = spec.n_bits if spec.has_integer_zero_point else 16
    per_group = scale_bits + (0 if spec.symmetric else zero_point_bits)
    return spec.n_bits + n_qparams(shape, spec) * per_group / numel
