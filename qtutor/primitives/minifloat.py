"""Minifloats from scratch: encode float32 into 4-, 6- and 8-bit float codes and decode them back.

A minifloat code is ``S | E (ebits) | M (mbits)``; its value is

    (-1)^S · 2^(E − bias) · (1 + M / 2^mbits)      (normal, E ≥ 1)
    (-1)^S · 2^(1 − bias) · (M / 2^mbits)           (subnormal, E = 0)

with the top codes reserved for Inf/NaN as each format says. The formats here:

=======  ==========================  ====  =========  =====  ===============================
name     torch dtype                 bias  max        Inf    NaN
=======  ==========================  ====  =========  =====  ===============================
e4m3     float8_e4m3fn               7     448        no     S.1111.111 only
e5m2     float8_e5m2                 15    57344      yes    S.11111.xx, xx ≠ 0 (IEEE-like)
e2m1     float4_e2m1fn_x2 (packed)   1     6          no     none
e3m2     — (MX FP6)                  3     28         no     none
e2m3     — (MX FP6)                  1     7.5        no     none
e8m0     float8_e8m0fnu              127   2^127      no     0xFF; unsigned, no zero, no
                                                             subnormals: 2^(E−127), E=0..254
=======  ==========================  ====  =========  =====  ===============================

Sources: Micikevicius et al., "FP8 Formats for Deep Learning" (2022) and the OCP 8-bit Floating
Point Specification (OFP8) v1.0 for e4m3/e5m2; OCP Microscaling Formats (MX) v1.0, section 5,
for FP6, FP4 and E8M0.

:func:`encode` works on the float32 bit pattern with integer arithmetic only (no float8 cast):
split ``|x| = sig · 2^p`` (``sig`` a 24-bit integer), pick the target exponent
``e_t = max(floor(log2|x|), emin)``, and shift ``sig`` right onto the grid ``2^(e_t − mbits)``
rounding to nearest, ties to even. A carry out of the mantissa moves into the exponent field by
itself (the code is ``((e_t + bias − 1) << mbits) + n``), subnormals included.

Overflow (a result beyond the largest finite value, or ±Inf in):

* ``saturate=True``: ±max. This is the OCP MX conversion, PTX's ``cvt.satfinite`` and — checked —
  torch 2.13's own ``x.to(torch.float8_e4m3fn)``, which maps every |x| > 448 *and ±Inf* to ±448
  (c10's ``fp8e4m3fn_from_fp32_value`` says "Finite overflow or inf → saturate to max finite
  value"; torch ≤ 2.11 gave NaN above 464 — pytorch/pytorch#178817, as torchao 0.18's ``to_mx``
  notes where it still clamps before casting).
* ``saturate=False``: the format's own rule. e5m2 → ±Inf (what torch's e5m2 cast does: it never
  saturates, 61440 — the tie above 57344 — already becomes Inf); e4m3 → NaN (OFP8's
  non-saturating mode, and torch ≤ 2.11's e4m3fn cast); formats with neither raise ValueError.

NaN in gives the NaN code with the input's sign bit (``0x7F``/``0xFF``, as torch); a format
without NaN raises ValueError.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

__all__ = [
    "NaNEncoding", "FloatFormat", "E4M3", "E5M2", "E2M1", "E3M2", "E2M3", "E8M0", "FORMATS",
    "encode", "decode", "round_to_format", "representable_values", "max_finite", "min_subnormal",
]


class NaNEncoding(enum.Enum):
    """Which codes of a format are NaN."""

    NONE = "none"  # no NaN (MX FP6/FP4)
    IEEE = "ieee"  # exponent all ones and mantissa ≠ 0; mantissa 0 is ±Inf (e5m2)
    ALL_ONES = "all_ones"  # only the all-ones magnitude (e4m3fn: S.1111.111; e8m0: 0xFF)


@dataclass(frozen=True)
class FloatFormat:
    """A sign/exponent/mantissa format of at most 8 bits, stored one code per ``uint8``.

    ``subnormals=False`` makes ``E = 0`` an ordinary binade (e8m0: ``2^-127``) instead of zero
    and the subnormals; such a format has no zero. ``has_inf`` needs ``nan=NaNEncoding.IEEE``.
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    signed: bool = True
    has_inf: bool = False
    nan: NaNEncoding = NaNEncoding.NONE
    subnormals: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.ebits <= 8:
            raise ValueError(f"ebits={self.ebits}: must be in [1, 8]")
        if not 0 <= self.mbits <= 7:
            raise ValueError(f"mbits={self.mbits}: must be in [0, 7]")
        if self.n_bits > 8:
            raise ValueError(f"{self.name}: sign + ebits + mbits = {self.n_bits} bits; codes are uint8, at most 8")
        if self.has_inf != (self.nan is NaNEncoding.IEEE):
            raise ValueError(f"has_inf={self.has_inf} with nan={self.nan}: Inf is the IEEE encoding, "
                             "so has_inf=True goes with nan=NaNEncoding.IEEE and only with it")
        if self.emin < -127 or self.emin - self.mbits < -149:
            raise ValueError(f"bias={self.bias}: the smallest value 2^{self.emin - self.mbits} is below float32's "
                             "range (emin must be ≥ −127 and the smallest step ≥ 2^−149)")
        if self.emax > 127:
            raise ValueError(f"bias={self.bias}: the largest exponent {self.emax} is beyond float32's 127")

    @property
    def n_bits(self) -> int:
        return int(self.signed) + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the lowest binade (the one that holds the subnormals, if any)."""
        return 1 - self.bias if self.subnormals else -self.bias

    @property
    def max_code(self) -> int:
        """Magnitude code (sign bit clear) of the largest finite value."""
        top = (1 << (self.ebits + self.mbits)) - 1
        if self.nan is NaNEncoding.IEEE:
            return top - (1 << self.mbits)  # exponent all ones is Inf/NaN
        if self.nan is NaNEncoding.ALL_ONES:
            return top - 1
        return top

    @property
    def emax(self) -> int:
        return (self.max_code >> self.mbits) - self.bias

    @property
    def nan_code(self) -> int | None:
        return None if self.nan is NaNEncoding.NONE else (1 << (self.ebits + self.mbits)) - 1

    @property
    def inf_code(self) -> int | None:
        return ((1 << self.ebits) - 1) << self.mbits if self.has_inf else None


E4M3 = FloatFormat("e4m3", 4, 3, 7, nan=NaNEncoding.ALL_ONES)
E5M2 = FloatFormat("e5m2", 5, 2, 15, has_inf=True, nan=NaNEncoding.IEEE)
E2M1 = FloatFormat("e2m1", 2, 1, 1)
E3M2 = FloatFormat("e3m2", 3, 2, 3)
E2M3 = FloatFormat("e2m3", 2, 3, 1)
E8M0 = FloatFormat("e8m0", 8, 0, 127, signed=False, nan=NaNEncoding.ALL_ONES, subnormals=False)
FORMATS: dict[str, FloatFormat] = {f.name: f for f in (E4M3, E5M2, E2M1, E3M2, E2M3, E8M0)}

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # all upcast to float32 exactly


def _check_fmt(fmt: FloatFormat) -> None:
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"fmt must be a FloatFormat (one of {sorted(FORMATS)} in FORMATS), got {fmt!r}")


def encode(x: torch.Tensor, fmt: FloatFormat, saturate: bool = True) -> torch.Tensor:
    """Codes of ``x`` in ``fmt``, rounded to nearest, ties to even; ``uint8``, ``x``'s shape.

    Args:
        x: float32 (or bfloat16/float16, upcast exactly), any shape.
        fmt: the target format.
        saturate: overflow and ±Inf go to ±max (True) or follow the format's rule (False); see the
            module docstring.
    """
    _check_fmt(fmt)
    if not isinstance(x, torch.Tensor) or x.dtype not in _INPUT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has dtype {got}: encode takes {', '.join(map(str, _INPUT_DTYPES))} "
                         "(float64 would be rounded twice)")
    bits = x.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign = bits >> 31
    e32 = (bits >> 23) & 0xFF
    man = bits & 0x7FFFFF
    is_nan = (e32 == 255) & (man != 0)
    is_inf = (e32 == 255) & (man == 0)
    # |x| = sig · 2^p exactly; for a float32 subnormal (e32 = 0) floor(log2|x|) ≤ −127 ≤ emin, so e32 − 127
    # is a good enough stand-in for the exponent: e_t comes out as emin either way
    sig = torch.where(e32 > 0, man | 0x800000, man)
    p = e32.clamp(min=1) - 150
    e_t = (e32 - 127).clamp(min=fmt.emin)
    s = (e_t - fmt.mbits - p).clamp(max=40)  # ≥ 15 always; from 26 on everything rounds to 0
    q = sig >> s
    rem = sig & ((1 << s) - 1)
    half = 1 << (s - 1)
    n = q + ((rem > half) | ((rem == half) & (q & 1 == 1))).to(torch.int64)  # round half to even
    if fmt.subnormals:
        mag = ((e_t + fmt.bias - 1) << fmt.mbits) + n  # a carry out of the mantissa bumps E by itself
    else:
        # no zero and no subnormals: anything below the lowest value rounds to it (its nearest)
        mag = (((e_t + fmt.bias) << fmt.mbits) + n - (1 << fmt.mbits)).clamp(min=0)
    over = (is_inf | (mag > fmt.max_code)) & ~is_nan
    if saturate:
        mag = torch.where(over, fmt.max_code, mag)
    elif fmt.has_inf:
        mag = torch.where(over, fmt.inf_code, mag)
    elif fmt.nan_code is not None:
        mag = torch.where(over, fmt.nan_code, mag)
    elif bool(over.any()):
        i = over.nonzero()[0].tolist()
        raise ValueError(f"x has {int(over.sum())} value(s) beyond {fmt.name}'s max {max_finite(fmt)} (the first, "
                         f"{float(x[tuple(i)])}, at index {i}), and {fmt.name} has no Inf or NaN: use saturate=True")
    if bool(is_nan.any()):
        if fmt.nan_code is None:
            raise ValueError(f"x contains {int(is_nan.sum())} NaN value(s) and {fmt.name} has no NaN code: "
                             f"clean x first (formats with NaN: {[f for f, v in FORMATS.items() if v.nan_code]})")
        mag = torch.where(is_nan, fmt.nan_code, mag)
    if fmt.signed:
        return (mag | (sign << (fmt.ebits + fmt.mbits))).to(torch.uint8)
    zero = (e32 == 0) & (man == 0)
    bad = ~is_nan & (sign == 1) & ~zero  # negative
    if not fmt.subnormals:
        bad |= zero
    if bool(bad.any()):
        raise ValueError(f"x holds {int(bad.sum())} value(s) that {fmt.name} cannot hold: it is unsigned"
                         + ("" if fmt.subnormals else " and has no zero") + "; x must be > 0")
    return mag.to(torch.uint8)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k as float32 for integer ``k`` in [−149, 127], built from its bit pattern (exact, subnormals too)."""
    normal = (k.clamp(min=-126) + 127) << 23
    sub = 1 << (k.clamp(-149, -127) + 149)
    return torch.where(k >= -126, normal, sub).to(torch.int32).view(torch.float32)


def decode(codes: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Float32 values of ``uint8`` ``codes`` (any shape); NaN/Inf codes give NaN/±Inf."""
    _check_fmt(fmt)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes has dtype {got}: decode takes uint8 codes")
    c = codes.to(torch.int64)
    if codes.numel() and int(c.max()) >= 1 << fmt.n_bits:
        raise ValueError(f"codes holds {int(c.max())}, beyond {fmt.name}'s {fmt.n_bits}-bit codes "
                         f"[0, {(1 << fmt.n_bits) - 1}]")
    mag = c & ((1 << (fmt.ebits + fmt.mbits)) - 1)
    e = mag >> fmt.mbits
    m = mag & ((1 << fmt.mbits) - 1)
    if fmt.subnormals:
        sig = torch.where(e > 0, m + (1 << fmt.mbits), m)
        k = e.clamp(min=1) - fmt.bias - fmt.mbits
    else:
        sig, k = m + (1 << fmt.mbits), e - fmt.bias - fmt.mbits
    v = sig.float() * _pow2(k)  # exact: ≤ 8 significant bits times a power of two inside float32's range
    if fmt.inf_code is not None:
        v = torch.where(mag == fmt.inf_code, torch.inf, v)
    if fmt.nan is NaNEncoding.IEEE:
        v = torch.where(mag > fmt.inf_code, torch.nan, v)
    elif fmt.nan is NaNEncoding.ALL_ONES:
        v = torch.where(mag == fmt.nan_code, torch.nan, v)
    if fmt.signed:
        v = torch.where((c >> (fmt.ebits + fmt.mbits)) == 1, -v, v)
    return v


def round_to_format(x: torch.Tensor, fmt: FloatFormat, saturate: bool = True) -> torch.Tensor:
    """``decode(encode(x))``: ``x`` rounded onto ``fmt``'s grid, as float32."""
    return decode(encode(x, fmt, saturate), fmt)


def representable_values(fmt: FloatFormat) -> torch.Tensor:
    """Every finite value of ``fmt``, ascending, float32 (one 0.0 for ±0)."""
    v = decode(torch.arange(1 << fmt.n_bits, dtype=torch.int64).to(torch.uint8), fmt)
    return torch.unique(v[torch.isfinite(v)])  # sorted; unique folds -0.0 into 0.0


def max_finite(fmt: FloatFormat) -> float:
    """The largest finite value of ``fmt`` (448 for e4m3, 57344 for e5m2, 6 for e2m1, 2^127 for e8m0)."""
    return float(decode(torch.tensor([fmt.max_code], dtype=torch.uint8), fmt))


def min_subnormal(fmt: FloatFormat) -> float:
    """The smallest positive value of ``fmt`` (2^−9 for e4m3, 2^−16 for e5m2; 2^−127 for e8m0, which has
    no subnormals and no zero: its code 0)."""
    return float(decode(torch.tensor([1 if fmt.subnormals else 0], dtype=torch.uint8), fmt))
