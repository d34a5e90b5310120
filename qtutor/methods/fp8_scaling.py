"""FP8 with a scale per tensor, token, channel, 1×128 group or 128×128 block (bit-exact emulation).

The W8A8 FP8 matmul itself (per-channel weights × per-token activations, torch._scaled_mm on a GPU) is
:mod:`qtutor.methods.fp8`; this module is the scaling recipes around the from-scratch encoder.

An FP8 tensor is ``x̂ = fp8(x / s) · s`` with one float32 scale ``s`` per group chosen so the
group's largest magnitude lands on the format's largest finite value (448 for E4M3, 57344 for
E5M2): ``s = amax / max_finite``. The groups:

* ``"tensor"`` — one scale (the "static per-tensor" recipe of early FP8 serving);
* ``"token"`` — one per row of an activation ``(..., K)`` (dynamic per-token, as vLLM's
  ``--quantization fp8`` does for activations);
* ``"channel"`` — one per output row of a weight ``(N, K)``; identical to ``"token"`` on a 2-D
  weight (one scale per row), kept as a separate name for clarity;
* ``"block"`` — one per ``block × block`` tile of a 2-D weight (DeepSeek-V3's recipe, 128×128 for
  weights; activations there use 1×128 groups, see ``"group"``); edge tiles of a width that is not a
  multiple of ``block`` are smaller (SmolLM2's 576 columns: four tiles of 128 and one of 64);
* ``"group"`` — one per ``block`` consecutive values along the last dim (DeepSeek-V3's 1×128
  activation tiles).

The rounding is :func:`qtutor.primitives.minifloat.round_to_format` (bit-exact with torch's
``float8_e4m3fn`` / ``float8_e5m2`` casts, saturating), so the emulation is exact in float32. A group
that is all zeros gets ``s = 1``. Reference for the block recipe: DeepSeek-AI, "DeepSeek-V3 Technical
Report" (2024), section 3.3.2, and its ``inference/kernel.py`` (``act_quant``, block 128; ``weight_dequant``).
"""
from __future__ import annotations

import torch

from ..primitives.minifloat import FORMATS, FloatFormat, max_finite, round_to_format

__all__ = ["FP8_GRANULARITIES", "fp8_scales", "fp8_fake_quant"]

FP8_GRANULARITIES = ("tensor", "token", "channel", "group", "block")


def _fmt(fmt: str | FloatFormat) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        if fmt.name not in ("e4m3", "e5m2"):
            raise ValueError(f"fmt={fmt.name!r}: FP8 means 'e4m3' or 'e5m2'")
        return fmt
    if fmt not in ("e4m3", "e5m2"):
        raise ValueError(f"fmt={fmt!r}: FP8 means 'e4m3' or 'e5m2'")
    return FORMATS[fmt]


def _check(x: torch.Tensor, granularity: str, block: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                        + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if granularity not in FP8_GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: allowed {FP8_GRANULARITIES}")
    if x.dim() == 0:
        raise ValueError("x is a scalar: expected at least one dimension")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf: an FP8 scale from it would be meaningless")
    if granularity in ("group", "block"):
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise ValueError(f"block={block!r}: must be a positive integer (DeepSeek-V3 uses 128)")
    if granularity == "block" and x.dim() != 2:
        raise ValueError(f"granularity='block' needs a 2-D weight (N, K), got shape {tuple(x.shape)}")
    if granularity == "channel" and x.dim() != 2:
        raise ValueError(f"granularity='channel' needs a 2-D weight (N, K), got shape {tuple(x.shape)}")


def _pad(x: torch.Tensor, granularity: str, block: int) -> torch.Tensor:
    """Zero-pad the grouped dims to multiples of ``block`` (zeros change no maximum): ragged edge tiles, as the
    reference kernels' masked loads give (SmolLM2's 576 = 4.5 × 128)."""
    if granularity not in ("group", "block"):
        return x
    pad = [0, -x.shape[-1] % block]
    if granularity == "block":
        pad += [0, -x.shape[0] % block]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


def _amax(x: torch.Tensor, granularity: str, block: int) -> torch.Tensor:
    """The group maxima of the padded ``x``, broadcastable against it after the reshape :func:`_grouped` does."""
    a = x.abs().float()
    if granularity == "tensor":
        return a.amax().reshape([1] * x.dim())
    if granularity in ("token", "channel"):
        return a.amax(dim=-1, keepdim=True)
    if granularity == "group":
        return a.reshape(*x.shape[:-1], x.shape[-1] // block, block).amax(dim=-1, keepdim=True)
    n, k = x.shape
    return a.reshape(n // block, block, k // block, block).amax(dim=(1, 3), keepdim=True)


def _grouped(x: torch.Tensor, granularity: str, block: int) -> torch.Tensor:
    if granularity == "group":
        return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    if granularity == "block":
        n, k = x.shape
        return x.reshape(n // block, block, k // block, block)
    return x


def fp8_scales(x: torch.Tensor, fmt: str | FloatFormat = "e4m3", granularity: str = "token",
               block: int = 128) -> torch.Tensor:
    """The float32 scales ``amax / max_finite`` of each group (1 for an all-zero group), keepdim-shaped."""
    f = _fmt(fmt)
    _check(x, granularity, block)
    amax = _amax(_pad(x, granularity, block), granularity, block)
    s = amax / max_finite(f)
    return torch.where(amax > 0, s, torch.ones_like(s))


def fp8_fake_quant(x: torch.Tensor, fmt: str | FloatFormat = "e4m3", granularity: str = "token",
                   block: int = 128) -> torch.Tensor:
    """``fp8(x / s) · s`` per group: the value an FP8 matmul would see, in ``x``'s dtype and shape."""
    f = _fmt(fmt)
    s = fp8_scales(x, f, granularity, block)
    xp = _pad(x.float(), granularity, block)
    q = (round_to_format(_grouped(xp, granularity, block) / s, f, saturate=True) * s).reshape(xp.shape)
    return q[tuple(slice(0, n) for n in x.shape)].to(x.dtype)
