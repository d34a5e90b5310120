"""KV-cache quantization primitives: KIVI's grouping (keys per channel, values per token) and FP8 E4M3.

KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", arXiv:2402.02750)
observes that keys have a few channels with large magnitude in every token (outlier *channels*) while values
do not: so keys are quantized **per channel** — one scale and minimum per channel over a group of
``group_size`` consecutive tokens — and values **per token**, over groups of ``group_size`` consecutive
channels. Both use asymmetric min/max codes

    scale = (max - min) / (2**bits - 1),  code = clamp(round((x - min) / scale), 0, 2**bits - 1),
    x ≈ code · scale + min

with ``scale`` and ``min`` stored in float16 (the codes are computed from the float16-rounded pair, so that
``|x - x̂| ≤ scale / 2`` holds for what is stored). Codes are packed little-endian along the last axis, as
:func:`qtutor.primitives.pack` does (for 4 bits: channel 2j in the low nibble of byte j) — the layout the
decode-attention kernel ``qtutor.kernels.kv_decode`` reads.

FP8 E4M3 (``torch.float8_e4m3fn``, max 448) is what serving engines store (vLLM's ``kv_cache_dtype="fp8"``):
one scale per layer, 1.0 unless calibrated, with saturation at ±448.
"""
from __future__ import annotations

import torch

__all__ = ["quantize_keys", "quantize_values", "dequantize_keys", "dequantize_values", "pack_codes",
           "unpack_codes", "FP8_E4M3_MAX", "fp8_encode", "fp8_decode"]

FP8_E4M3_MAX = 448.0
FP16_MAX = 65504.0
_BITS = (2, 4, 8)


def _check_finite(x: torch.Tensor, limit: float | None = None, name: str = "the key/value states") -> None:
    """Raise unless ``x`` is finite (and, with ``limit``, within ±limit: KIVI's float16 scale and min must hold it)."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} hold inf or NaN: a KV cache quantizes finite values only")
    if limit is not None and x.numel() and x.abs().max() > limit:
        raise ValueError(f"{name} reach |x| = {x.abs().max().item():.6g}: KIVI stores each group's scale and minimum "
                         f"in float16, so values must lie within ±{limit:g}")


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in _BITS:  # 4.0 == 4, but cannot index
        raise ValueError(f"bits={bits!r}: a KIVI cache stores 2-, 4- or 8-bit codes")


def _check_group(group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: a quantization group is a positive whole number of elements")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (..., D) in [0, 2**bits) -> uint8 (..., D * bits / 8), little-endian along D."""
    _check_bits(bits)
    if bits == 8:
        return codes.to(torch.uint8)
    per = 8 // bits
    if codes.shape[-1] % per:
        raise ValueError(f"head_dim={codes.shape[-1]}: {bits}-bit codes pack {per} per byte, "
                         f"so the head dimension must be a multiple of {per}")
    c = codes.to(torch.uint8).unflatten(-1, (-1, per))  # (..., D/per, per)
    out = c[..., 0].clone()
    for j in range(1, per):
        out |= c[..., j] << (bits * j)
    return out


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 (..., D * bits / 8) -> uint8 codes (..., D)."""
    _check_bits(bits)
    if bits == 8:
        return packed
    per, mask = 8 // bits, (1 << bits) - 1
    parts = [(packed >> (bits * j)) & mask for j in range(per)]
    return torch.stack(parts, dim=-1).flatten(-2)  # (..., D/per, per) -> (..., D)


def _minmax_codes(x: torch.Tensor, dim: int, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric codes of ``x`` reduced over ``dim``: (codes uint8, scale fp16, min fp16), keepdim."""
    xf = x.float()
    _check_finite(xf, FP16_MAX)
    lo, hi = xf.amin(dim, keepdim=True), xf.amax(dim, keepdim=True)
    qmax = 2**bits - 1
    # the float16 min must not exceed the group's minimum (else x = lo clamps to code 0 with an error of up to half a
    # float16 ulp of lo, past scale / 2 for a narrow group far from 0): round it down
    mn = lo.half()
    mn = torch.where(mn.float() > lo, torch.nextafter(mn, mn.new_tensor(-FP16_MAX)), mn)
    # the float16 scale must cover [min16, max]: round it up so no code exceeds qmax by more than rounding
    scale = ((hi - mn.float()) / qmax).half()
    scale = torch.where(scale.float() * qmax < hi - mn.float(), torch.nextafter(scale, scale.new_tensor(65504.0)),
                        scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: codes 0, x̂ = min
    codes = torch.round((xf - mn.float()) / scale.float()).clamp_(0, qmax).to(torch.uint8)
    return codes, scale, mn


def quantize_keys(k: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys (B, H, T, D), T a multiple of ``group_size``: per channel over groups of ``group_size`` tokens.

    Returns packed codes uint8 (B, H, T, D·bits/8), scale and min float16 (B, H, T/group_size, D).
    """
    _check_bits(bits)
    _check_group(group_size)
    B, H, T, D = k.shape
    if T % group_size:
        raise ValueError(f"{T} tokens: keys are quantized in whole groups of group_size={group_size} tokens")
    g = k.reshape(B, H, T // group_size, group_size, D)  # (B, H, T/G, G, D)
    codes, scale, mn = _minmax_codes(g, 3, bits)
    return pack_codes(codes.reshape(B, H, T, D), bits), scale.squeeze(3), mn.squeeze(3)


def quantize_values(v: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Values (B, H, T, D), D a multiple of ``group_size``: per token over groups of ``group_size`` channels.

    Returns packed codes uint8 (B, H, T, D·bits/8), scale and min float16 (B, H, T, D/group_size).
    """
    _check_bits(bits)
    _check_group(group_size)
    B, H, T, D = v.shape
    if D % group_size:
        raise ValueError(f"head_dim={D}: values are quantized in groups of group_size={group_size} channels, "
                         f"which must divide it")
    g = v.reshape(B, H, T, D // group_size, group_size)  # (B, H, T, D/G, G)
    codes, scale, mn = _minmax_codes(g, 4, bits)
    return pack_codes(codes.reshape(B, H, T, D), bits), scale.squeeze(4), mn.squeeze(4)


def dequantize_keys(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, bits: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_keys` up to rounding: (B, H, T, D) in ``dtype``."""
    q = unpack_codes(codes, bits).float()  # (B, H, T, D)
    if scale.shape[2] == 0:
        return q.to(dtype)
    G = q.shape[2] // scale.shape[2]
    s = scale.float().repeat_interleave(G, dim=2)
    m = mn.float().repeat_interleave(G, dim=2)
    return (q * s + m).to(dtype)


def dequantize_values(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, bits: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_values` up to rounding: (B, H, T, D) in ``dtype``."""
    q = unpack_codes(codes, bits).float()  # (B, H, T, D)
    G = q.shape[3] // scale.shape[3]
    s = scale.float().repeat_interleave(G, dim=3)
    m = mn.float().repeat_interleave(G, dim=3)
    return (q * s + m).to(dtype)


def fp8_encode(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x / scale`` saturated to ±448 and cast to ``torch.float8_e4m3fn`` (round to nearest even)."""
    _check_finite(x)
    return (x.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def fp8_decode(x: torch.Tensor, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (x.float() * scale).to(dtype)
