"""Block-scaled formats, emulated bit-exactly: OCP MX (MXFP8, MXFP6, MXFP4, MXINT8) and NVIDIA's NVFP4.

**MX** — OCP Microscaling Formats (MX) Specification v1.0 (2023), section 6.3. Each block of 32
consecutive values ``V`` along the last dim shares one E8M0 scale ``X``:

    shared_exp = floor(log2(max|V|)) − emax_elem        clamped to E8M0's [−127, 127]
    X          = 2^shared_exp                            (E8M0 code shared_exp + 127)
    P_i        = element_format(V_i / X)                 rounded to nearest even, saturating

``emax_elem`` is the exponent of the element format's largest binade: 8 (E4M3), 15 (E5M2), 4 (E3M2),
2 (E2M3, E2M1) and 0 for INT8. An all-zero block gets ``shared_exp = −127`` (code 0, its elements 0).
For finite float32 input the upper clamp never acts (``floor(log2) ≤ 127`` and ``emax_elem ≥ 0``).
MXINT8's elements are 8-bit two's complement with an implicit scale 2⁻⁶ (value ``q · 2⁻⁶``); as in
Microsoft's reference ``microxcaling`` (``mx/formats.py``: max_norm = 127/64) they are clamped
symmetrically to [−127, 127], so −128 is never produced. The spec leaves the element rounding to the
implementation; here it is round-half-to-even everywhere (torchao's choice; microxcaling's default
``round='nearest'`` rounds ties away from zero instead, its ``'even'`` matches this).

Checked bit for bit against torchao 0.18.0 ``torchao/prototype/mx_formats/mx_tensor.py::to_mx``
(``ScaleCalculationMode.FLOOR``, the spec's rule, torchao's default) for every FP element format.
One deliberate difference: when a block's scale code is 0 (``X = 2⁻¹²⁷``, blocks with
``max|V| < 2^(emax_elem − 126)``) torchao divides by 2⁻¹²⁶ (it clamps the float32 scale to the
smallest normal, a Triton workaround) while the stored code still says 2⁻¹²⁷; here ``V / 2⁻¹²⁷``,
as the spec says. torchao has no MXINT8.

**NVFP4** — E2M1 elements, one E4M3 scale per 16 values, one float32 scale per tensor. The recipe
and its float32 arithmetic are torchao 0.18.0's (``nvfp4_tensor.py``: ``per_tensor_amax_to_scale``,
``nvfp4_quantize`` with a per-tensor scale, ``NVFP4Tensor.dequantize``):

    g   = max|x| / (448 · 6)                                    per-tensor float32 scale
    s_b = e4m3(clamp((max|x_b| / 6) / g, 2⁻⁶, 448))             block scale, an E4M3 code
    q   = e2m1(clamp(x · ((1 / g) / s_b), −6, 6))               elements (x times a reciprocal)
    x̂   = q · (g · s_b)

Note the lower clamp at 2⁻⁶, E4M3's smallest *normal*: a block far below the tensor's maximum
never gets a subnormal scale. NVIDIA's CUDA kernels (TensorRT-LLM / vLLM ``cvt_fp16_to_fp4``) form
the same quantities with approximate reciprocals (``rcp.approx.ftz``), so they can differ from this
(and from torchao) in the last bit of a scale. An all-zero tensor gets ``g = 1`` (``g = 0`` would
make every block scale 0/0); its codes are 0. A tensor whose ``max|x| / 2688`` is below 2⁻¹²¹
(``max|x| < 1.0e-33``) gets ``g = 2⁻¹²¹``: with a block scale of at least 2⁻⁶ the multiplier ``(1 / g) / s_b``
then stays below 2¹²⁸, where torchao's overflows to inf and turns the zeros of a block into NaN (a deliberate
difference, found by a property test).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..primitives.minifloat import E2M1, E2M3, E3M2, E4M3, E5M2, FloatFormat, decode, encode

__all__ = [
    "MXFormat", "MX_FORMATS", "NVFP4_BLOCK_SIZE", "mx_quantize", "mx_dequantize", "mx_fake_quant",
    "nvfp4_quantize", "nvfp4_dequantize", "nvfp4_fake_quant", "bits_per_weight",
]

E8M0_BIAS = 127
NVFP4_BLOCK_SIZE = 16
_E4M3_MIN_NORMAL = 2.0**-6
_MIN_TENSOR_SCALE = 2.0**-121  # block scales are ≥ 2⁻⁶, so (1 / g) / s_b ≤ 2¹²⁷ stays finite  # torchao's E4M3_EPS = torch.finfo(torch.float8_e4m3fn).tiny


@dataclass(frozen=True)
class MXFormat:
    """One MX format: the element format (``None`` for MXINT8) and the block size (32 in MX v1.0)."""

    name: str
    element: FloatFormat | None
    block_size: int = 32

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size={self.block_size}: must be ≥ 1 (MX v1.0 uses 32)")

    @property
    def element_bits(self) -> int:
        return 8 if self.element is None else self.element.n_bits

    @property
    def emax(self) -> int:
        """Exponent of the element format's largest binade (0 for INT8: its values lie in (−2, 2))."""
        return 0 if self.element is None else self.element.emax


MX_FORMATS: dict[str, MXFormat] = {
    f.name: f
    for f in (
        MXFormat("mxfp8_e4m3", E4M3), MXFormat("mxfp8_e5m2", E5M2), MXFormat("mxfp6_e3m2", E3M2),
        MXFormat("mxfp6_e2m3", E2M3), MXFormat("mxfp4", E2M1), MXFormat("mxint8", None),
    )
}
_ALL_NAMES = sorted(MX_FORMATS) + ["nvfp4"]


def _mx_format(fmt: str | MXFormat) -> MXFormat:
    if isinstance(fmt, MXFormat):
        return fmt
    if fmt not in MX_FORMATS:
        raise ValueError(f"fmt_name={fmt!r}: unknown MX format; allowed: {sorted(MX_FORMATS)}")
    return MX_FORMATS[fmt]


def _check_x(x: torch.Tensor, block_size: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has dtype {got}: {what} takes float32, bfloat16 or float16")
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise ValueError(f"x has shape {tuple(x.shape)}: {what} needs the last dim to be a multiple of "
                         f"{block_size} (no padding is done; pad x with zeros first)")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"x contains {int(bad.sum())} NaN or Inf value(s), the first at index "
                         f"{bad.nonzero()[0].tolist()}: a block's scale would be NaN; clean x first")


def _pow2_from_e8m0(codes: torch.Tensor) -> torch.Tensor:
    """2^(code − 127) as float32 from E8M0 codes (code 0 is the subnormal 2⁻¹²⁷; 255 gives NaN)."""
    c = codes.to(torch.int32)
    x = torch.where(c == 0, 0x00400000, c << 23).view(torch.float32)
    return torch.where(c == 255, torch.nan, x)


def mx_quantize(x: torch.Tensor, fmt_name: str | MXFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (..., K) -> E8M0 scale codes (..., K / 32) ``uint8`` and element codes (..., K) ``uint8``.

    FP formats: one code per element (low bits of the byte, unpacked). MXINT8: the int8 two's-complement
    byte, viewed as ``uint8``. ``K`` must be a multiple of 32 (ValueError otherwise: no implicit padding).
    """
    fmt = _mx_format(fmt_name)
    _check_x(x, fmt.block_size, "mx_quantize")
    v = x.float().unflatten(-1, (-1, fmt.block_size))  # (..., K/32, 32)
    amax = v.abs().amax(dim=-1)  # (..., K/32)
    # floor(log2(amax)) is the float32 exponent field minus the bias (−127 for 0 and subnormals: clamped anyway)
    floor_log2 = ((amax.view(torch.int32) >> 23) & 0xFF) - 127
    shared_exp = (floor_log2 - fmt.emax).clamp(-E8M0_BIAS, E8M0_BIAS)
    scales = (shared_exp + E8M0_BIAS).to(torch.uint8)
    # X is a power of two: the quotient is exact except where it is a float32 subnormal, far below every element grid
    p = v / _pow2_from_e8m0(scales).unsqueeze(-1)  # (..., K/32, 32)
    if fmt.element is None:
        q = torch.round(p * 64).clamp(-127, 127)  # int8 · 2⁻⁶, round half to even, symmetric
        codes = q.to(torch.int8).view(torch.uint8)
    else:
        codes = encode(p, fmt.element, saturate=True)
    return scales, codes.flatten(-2)  # (..., K/32), (..., K)


def mx_dequantize(scales: torch.Tensor, codes: torch.Tensor, fmt_name: str | MXFormat,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values ``P_i · X`` of :func:`mx_quantize`'s output, shape of ``codes``, as ``dtype``; scale code 255 -> NaN."""
    fmt = _mx_format(fmt_name)
    for name, t in (("scales", scales), ("codes", codes)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
            raise ValueError(f"{name} must be a uint8 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if codes.ndim == 0 or codes.shape[-1] % fmt.block_size or \
            tuple(scales.shape) != (*codes.shape[:-1], codes.shape[-1] // fmt.block_size):
        raise ValueError(f"scales {tuple(scales.shape)} and codes {tuple(codes.shape)} do not match: scales "
                         f"must have codes' shape with the last dim divided by {fmt.block_size}")
    if fmt.element is None:
        p = codes.view(torch.int8).float() * 2.0**-6
    else:
        p = decode(codes, fmt.element)
    p = p.unflatten(-1, (-1, fmt.block_size))  # (..., K/32, 32)
    return (p * _pow2_from_e8m0(scales).unsqueeze(-1)).flatten(-2).to(dtype)


def mx_fake_quant(x: torch.Tensor, fmt_name: str | MXFormat) -> torch.Tensor:
    """``mx_dequantize(mx_quantize(x))`` in ``x``'s dtype."""
    return mx_dequantize(*mx_quantize(x, fmt_name), fmt_name, dtype=x.dtype)


def nvfp4_quantize(
    x: torch.Tensor, per_tensor_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` (..., K) -> E4M3 block-scale codes (..., K / 16), E2M1 codes (..., K) (unpacked), per-tensor scale.

    All codes ``uint8``; the per-tensor scale is a float32 0-dim tensor, ``max|x| / 2688`` unless given
    (a calibrated one). ``K`` must be a multiple of 16.
    """
    _check_x(x, NVFP4_BLOCK_SIZE, "nvfp4_quantize")
    xf = x.float()
    if per_tensor_scale is None:
        per_tensor_scale = xf.abs().amax() / (448.0 * 6.0)
        if float(per_tensor_scale) == 0:
            per_tensor_scale = torch.ones((), dtype=torch.float32)
        elif float(per_tensor_scale) < _MIN_TENSOR_SCALE:  # 1/g would overflow to inf and 0 · inf give NaN
            per_tensor_scale = torch.full((), _MIN_TENSOR_SCALE, dtype=torch.float32)
    per_tensor_scale = torch.as_tensor(per_tensor_scale, dtype=torch.float32)
    if per_tensor_scale.ndim != 0 or not float(per_tensor_scale) >= _MIN_TENSOR_SCALE or \
            not math.isfinite(float(per_tensor_scale)):
        raise ValueError(f"per_tensor_scale={per_tensor_scale.tolist()}: must be one finite number ≥ 2⁻¹²¹ "
                         "(below it the element multiplier 1 / (scale · block scale) overflows float32)")
    v = xf.unflatten(-1, (-1, NVFP4_BLOCK_SIZE))  # (..., K/16, 16)
    block_scale = v.abs().amax(dim=-1) / 6.0  # (..., K/16)
    scaled = (block_scale / per_tensor_scale).clamp(_E4M3_MIN_NORMAL, 448.0)
    scales = encode(scaled, E4M3, saturate=True)
    reciprocal = (1.0 / per_tensor_scale) / decode(scales, E4M3)  # torchao's order of operations, bit for bit
    codes = encode((v * reciprocal.unsqueeze(-1)).clamp(-6.0, 6.0), E2M1, saturate=True)
    return scales, codes.flatten(-2), per_tensor_scale


def nvfp4_dequantize(scales: torch.Tensor, codes: torch.Tensor, per_tensor_scale: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q · (g · s_b)`` for :func:`nvfp4_quantize`'s output; shape of ``codes``, as ``dtype``."""
    for name, t in (("scales", scales), ("codes", codes)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
            raise ValueError(f"{name} must be a uint8 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if codes.ndim == 0 or codes.shape[-1] % NVFP4_BLOCK_SIZE or \
            tuple(scales.shape) != (*codes.shape[:-1], codes.shape[-1] // NVFP4_BLOCK_SIZE):
        raise ValueError(f"scales {tuple(scales.shape)} and codes {tuple(codes.shape)} do not match: scales "
                         f"must have codes' shape with the last dim divided by {NVFP4_BLOCK_SIZE}")
    s = torch.as_tensor(per_tensor_scale, dtype=torch.float32) * decode(scales, E4M3)  # (..., K/16)
    q = decode(codes, E2M1).unflatten(-1, (-1, NVFP4_BLOCK_SIZE))  # (..., K/16, 16)
    return (q * s.unsqueeze(-1)).flatten(-2).to(dtype)


def nvfp4_fake_quant(x: torch.Tensor, per_tensor_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``nvfp4_dequantize(nvfp4_quantize(x))`` in ``x``'s dtype."""
    return nvfp4_dequantize(*nvfp4_quantize(x, per_tensor_scale), dtype=x.dtype)


def bits_per_weight(fmt_name: str, numel: int | None = None) -> float:
    """Storage bits per value, scales included: element bits + 8 / block size (MXFP4: 4.25, MXFP8: 8.25).

    NVFP4: ``4 + 8/16 + 32/numel`` — the float32 per-tensor scale counted for a tensor of ``numel``
    values; ``numel=None`` leaves it out (the limit of a large tensor, 4.5). MX formats ignore ``numel``.
    """
    if fmt_name == "nvfp4":
        if numel is not None and (not isinstance(numel, int) or numel < 1):
            raise ValueError(f"numel={numel!r}: must be a positive int (the tensor's number of values) or None")
        return 4 + 8 / NVFP4_BLOCK_SIZE + (0.0 if numel is None else 32 / numel)
    if fmt_name not in MX_FORMATS:
        raise ValueError(f"fmt_name={fmt_name!r}: unknown format; allowed: {_ALL_NAMES}")
    fmt = MX_FORMATS[fmt_name]
    return fmt.element_bits + 8 / fmt.block_size
