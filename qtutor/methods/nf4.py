"""NF4 and FP4 with double quantization, byte-compatible with bitsandbytes.

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (2023), §3:

* **NormalFloat-4**: 16 levels at quantiles of N(0, 1), normalised to [-1, 1].
  bitsandbytes' table is asymmetric: 8 positive levels from the quantiles
  ``linspace(0.9677083, 0.5, 9)[:-1]``, 7 negative ones from
  ``linspace(0.9677083, 0.5, 8)[:-1]``, and an exact zero — so zero is
  representable and the positive side gets the extra level.
* **Blockwise absmax**: each block of 64 consecutive weights (of the
  flattened tensor) is divided by its max |w| and each value is mapped to the
  nearest level (ties by the midpoints, as ``torch.bucketize``).
* **Packing**: two codes per byte, the *first* in the high nibble.
* **Double quantization**: the fp32 absmaxes (one per 64 weights, 0.5 bit per
  weight) are themselves quantized: subtract their mean, then 8-bit blockwise
  quantization (blocks of 256) with bitsandbytes' signed dynamic map — 0.127 bit
  per weight instead of 0.5.  On the CPU bitsandbytes maps each value to its code
  through a 65536-bin lookup table rather than an exact nearest search; we do
  the same, so that the bytes agree.

Every step follows bitsandbytes 0.50's CPU/default implementation
(``quantize_4bit``, ``quantize_blockwise``, ``create_normal_map``,
``create_dynamic_map``); ``tests/methods/test_nf4.py`` checks byte identity.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import torch
from ..primitives import check_float_tensor

__all__ = [
    "QuantType4",
    "NF4Config",
    "NF4State",
    "normal_float_levels",
    "fp4_levels",
    "dynamic_map",
    "quantize_4bit",
    "dequantize_4bit",
    "nf4_bits_per_weight",
    "nf4_linear",
]

NF4_OFFSET = 0.9677083  # bitsandbytes' default outermost quantile


class QuantType4(enum.Enum):
    NF4 = "nf4"
    FP4 = "fp4"


@dataclass(frozen=True)
class NF4Config:
    """Blockwise 4-bit quantization as bitsandbytes' ``quantize_4bit``."""

    quant_type: QuantType4 = QuantType4.NF4
    blocksize: int = 64
    double_quant: bool = True  # bitsandbytes' compress_statistics
    dq_blocksize: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.quant_type, QuantType4):
            raise ValueError(f"quant_type={self.quant_type!r}: must be QuantType4.NF4 or QuantType4.FP4")
        for name in ("blocksize", "dq_blocksize"):
            v = getattr(self, name)
            if v not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
                raise ValueError(f"{name}={v}: must be a power of two from 32 to 4096")


def normal_float_levels(offset: float = NF4_OFFSET, use_extra_value: bool = True) -> torch.Tensor:
    """The 16 NF4 levels (float32, sorted) derived from normal quantiles, as ``create_normal_map``."""
    from scipy.stats import norm

    # float32 quantile grids, float64 inverse CDF, then float32: the same roundings as bitsandbytes
    pos = norm.ppf(torch.linspace(offset, 0.5, 9 if use_extra_value else 8)[:-1].numpy()).tolist()
    neg = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())).tolist()
    values = torch.tensor(pos + [0.0] + neg, dtype=torch.float32).sort().values
    return values / values.max()


def fp4_levels() -> torch.Tensor:
    """bitsandbytes' FP4 (e2m1, with a subnormal 0.0625) levels in code order 0..15, divided by 12."""
    data = torch.tensor([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0])
    return data / data.abs().max()


def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (Dettmers 2016): 256 sorted float32 values in [-1, 1]."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        # each decade 10^(i-6) holds 2^i fraction steps between 0.1 and 1
        boundaries = torch.linspace(0.1, 1, 2 ** (i + non_sign_bits - max_exponent_bits) + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def _levels(quant_type: QuantType4) -> torch.Tensor:
    return normal_float_levels() if quant_type is QuantType4.NF4 else fp4_levels()


def _blockwise_codes(flat: torch.Tensor, levels: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-level codes of ``flat`` (n,) float32 per block of ``blocksize``; returns codes and absmax.

    An odd count gets one more code, that of 0.0, so that codes fill whole bytes.
    """
    order = torch.argsort(levels)
    bounds = (levels[order[:-1]] + levels[order[1:]]) / 2
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].reshape(-1, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().max(dim=-1)[0]
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if n % blocksize:  # a short last block, as bitsandbytes handles it
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.cat([scaled, scaled.new_zeros(1)])
    idx = torch.bucketize(scaled, bounds, out_int32=True)
    return order[idx].to(torch.uint8), absmax


_LUT_SIZE = 65536


@functools.lru_cache(maxsize=4)
def _lut(code_bytes: bytes) -> torch.Tensor:
    """bitsandbytes' CPU lookup table: 65536 bins over [-1, 1] -> index of the nearest code value."""
    code = torch.frombuffer(bytearray(code_bytes), dtype=torch.float32)
    mid = 0.5 * (code[:-1] + code[1:])  # float32 midpoints
    i = torch.arange(_LUT_SIZE, dtype=torch.float32)
    val = -1.0 + (2.0 * i) / torch.full_like(i, _LUT_SIZE - 1)  # IEEE float32 division, as in C
    return torch.searchsorted(mid, val, side="left").to(torch.uint8)  # codes whose midpoint < val


def _blockwise_codes_lut(flat: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization exactly as bitsandbytes' CPU kernel (``quantize_cpu``) does it.

    It does not search for the nearest code value: it scales to [-1, 1], maps the
    value to one of 65536 uniform bins and looks the bin up in a table built from
    the codes' midpoints — nearest up to 1/32768.  The index is computed with one
    fused multiply-add, ``(v + 1) / 2 * 65535 + 0.5``, emulated here in float64.
    """
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, blocksize)  # zero padding leaves absmax as is
    absmax = blocks.abs().amax(dim=1)
    inv = torch.full_like(absmax, 1.0) / absmax.clamp(min=1e-38)  # correctly rounded, as C's 1.0f / absmax
    t = (torch.clamp(blocks * inv[:, None], -1.0, 1.0) + 1.0) * 0.5  # float32
    idx = (t.double() * (_LUT_SIZE - 1) + 0.5).float().to(torch.int64)  # fma: one rounding, then truncate
    codes = _lut(code.numpy().tobytes())[idx]
    codes[absmax == 0] = 0
    return codes.reshape(-1)[:n], absmax


def _dequant_blocks(values: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    n = values.numel()
    full = n - n % blocksize
    out = torch.empty(n, dtype=torch.float32, device=values.device)
    out[:full] = (values[:full].view(-1, blocksize) * absmax[: full // blocksize].view(-1, 1)).reshape(-1)
    if n % blocksize:
        out[full:] = values[full:] * absmax[-1]
    return out


@dataclass
class NF4State:
    """A 4-bit tensor: packed codes and (possibly double-quantized) block scales."""

    packed: torch.Tensor  # ((n + 1) // 2, 1) uint8, first code in the high nibble
    shape: torch.Size
    dtype: torch.dtype
    config: NF4Config
    absmax: torch.Tensor  # (n_blocks,) float32, or uint8 codes when double-quantized
    offset: torch.Tensor | None = None  # () float32, the mean subtracted before double quantization
    absmax2: torch.Tensor | None = None  # (n_blocks / dq_blocksize,) float32


def quantize_4bit(w: torch.Tensor, config: NF4Config = NF4Config()) -> NF4State:
    """Quantize ``w`` (any shape; float32/16, bfloat16) blockwise over its flattened values."""
    check_float_tensor(w, "w")
    flat = w.reshape(-1).float()
    codes, absmax = _blockwise_codes(flat, _levels(config.quant_type), config.blocksize)
    packed = ((codes[::2] << 4) | codes[1::2]).unsqueeze(1)  # (n/2, 1)
    state = NF4State(packed, w.shape, w.dtype, config, absmax)
    if config.double_quant:
        state.offset = absmax.mean()
        state.absmax, state.absmax2 = _blockwise_codes_lut(absmax - state.offset, dynamic_map(), config.dq_blocksize)
    return state


def dequantize_4bit(state: NF4State) -> torch.Tensor:
    """Reconstruct the tensor (shape and dtype of the original)."""
    device = state.packed.device  # on the codes' device (the tables and the scales go there)
    absmax = state.absmax.to(device)
    if state.config.double_quant:
        absmax = _dequant_blocks(dynamic_map().to(device)[absmax.long()], state.absmax2.to(device),
                                 state.config.dq_blocksize) + state.offset.to(device)
    codes = torch.stack([state.packed[:, 0] >> 4, state.packed[:, 0] & 0xF], dim=1).reshape(-1)
    n = state.shape.numel()
    values = _levels(state.config.quant_type).to(device)[codes.long()][:n]  # float32
    return _dequant_blocks(values, absmax, state.config.blocksize).reshape(state.shape).to(state.dtype)


def nf4_bits_per_weight(numel: int, config: NF4Config = NF4Config()) -> float:
    """Storage per weight: 4-bit codes, plus fp32 absmax per block — or, double-quantized, an 8-bit
    absmax per block, an fp32 absmax per ``dq_blocksize`` blocks and one fp32 offset."""
    n_blocks = -(-numel // config.blocksize)
    if not config.double_quant:
        return 4 + 32 * n_blocks / numel
    n_blocks2 = -(-n_blocks // config.dq_blocksize)
    return 4 + (8 * n_blocks + 32 * n_blocks2 + 32) / numel


class _DequantMatmul(torch.autograd.Function):
    """``x @ W.T`` with ``W`` dequantized on ``x``'s device in the weight's dtype, forward and again backward
    (bitsandbytes' ``MatMul4Bit``): nothing but the 4-bit state is kept for the backward pass, and the frozen
    weight gets no gradient."""

    @staticmethod
    def forward(ctx, x2: torch.Tensor, state: NF4State) -> torch.Tensor:
        ctx.state = state
        w = _dequantize_on(state, x2.device)
        return (x2.to(w.dtype) @ w.T).to(x2.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = _dequantize_on(ctx.state, grad.device)
        return (grad.to(w.dtype) @ w).to(grad.dtype), None


def _dequantize_on(state: NF4State, device: torch.device) -> torch.Tensor:
    if state.packed.device == device:
        return dequantize_4bit(state)
    return dequantize_4bit(NF4State(state.packed.cpu(), state.shape, state.dtype, state.config, state.absmax.cpu(),
                                    None if state.offset is None else state.offset.cpu(),
                                    None if state.absmax2 is None else state.absmax2.cpu())).to(device)


def nf4_linear(x: torch.Tensor, state: NF4State, bias: torch.Tensor | None = None, kernel: bool = False,
               levels: torch.Tensor | None = None, absmax_code: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (..., in) through the 4-bit weight of ``state`` (out, in) -> (..., out) in ``x.dtype``.

    ``kernel=True`` runs :func:`qtutor.kernels.nf4.nf4_matmul` on the packed codes (``levels`` and
    ``absmax_code`` on ``x``'s device save rebuilding them); otherwise the weight is dequantized (where the
    state lives) and multiplied in PyTorch in the weight's dtype.
    When autograd records (``x.requires_grad`` with grad mode on: a LoRA adapter below it is training) the
    weight is dequantized on ``x``'s device and multiplied in PyTorch, in forward and again in backward, so
    ``x`` gets its gradient on either device (the Triton kernel has no backward).
    Both paths take ``x`` float16, bfloat16 or float32 — bitsandbytes' ``matmul_4bit`` takes any
    float (``Linear4bit`` computes in float32 by default) — and refuse other dtypes and a last
    dimension other than ``in`` with the kernel's ``ValueError``
    (:func:`qtutor.kernels.nf4.check_activations`); no tokens give an empty (..., 0, out) result.
    """
    from ..kernels.nf4 import check_activations

    out_features, in_features = state.shape
    check_activations(x, in_features)  # the kernel path's checks, on every path
    x2 = x.reshape(-1, in_features)  # (tokens, in)
    if torch.is_grad_enabled() and x.requires_grad:
        y = _DequantMatmul.apply(x2, state)  # training through the frozen base (QLoRA): a gradient for x
    elif kernel:
        from ..kernels.nf4 import nf4_matmul

        levels = _levels(state.config.quant_type).to(x.device) if levels is None else levels
        dq = {}
        if state.config.double_quant:
            code = dynamic_map().to(x.device) if absmax_code is None else absmax_code
            dq = dict(absmax_code=code, absmax2=state.absmax2, offset=state.offset,
                      dq_blocksize=state.config.dq_blocksize)
        y = nf4_matmul(x2.contiguous(), state.packed, state.absmax, levels, out_features, state.config.blocksize, **dq)
    else:
        w = _dequantize_on(state, x.device)  # (out, in); the same bits on any device (elementwise products)
        y = (x2.to(w.dtype) @ w.T).to(x.dtype)  # (tokens, out)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], out_features)
