"""The int32 packings of the GPTQ, AWQ and compressed-tensors checkpoints, both ways.

All three store the same ``QuantizedWeight`` (codes ``q`` (out, in), group
``scale`` and integer ``zero`` (out, n_groups), ``g_idx`` (in,)) differently:

* **GPTQ** (AutoGPTQ / GPTQModel ``checkpoint_format="gptq"``, read by transformers
  and vLLM): ``qweight`` int32 (in·b/32, out) packs ``32/b`` codes of consecutive
  *input* rows per word, lowest bits first; ``qzeros`` int32 (n_groups, out·b/32)
  packs zero-points along the output dimension; ``scales`` fp16 (n_groups, out);
  ``g_idx`` int32 (in,). Format **v1** stores ``zero − 1`` (an off-by-one of the
  original AutoGPTQ packer that every loader adds back); GPTQModel's internal
  **v2** stores ``zero`` itself.
* **AWQ GEMM** (llm-awq / AutoAWQ ``WQLinear_GEMM``, ``version="gemm"``):
  ``qweight`` int32 (in, out·b/32) packs 8 codes of *output* columns per word in
  the interleaved order 0, 2, 4, 6, 1, 3, 5, 7 (it lets the CUDA kernel unpack
  pairs with one shift); ``qzeros`` the same way, no off-by-one; ``scales`` fp16
  (n_groups, out). No ``g_idx``: AWQ has no act-order.
* **compressed-tensors** ``pack-quantized`` (vLLM, llm-compressor): signed codes
  ``q − 2ᵇ⁻¹`` packed densely, ``b`` bits after another along each row, into
  ``weight_packed`` int32 (out, ⌈in·b/32⌉); ``weight_scale`` (out, n_groups);
  asymmetric ``weight_zero_point`` as signed values packed along the output
  dimension; ``weight_shape``.
"""
from __future__ import annotations

import torch

from ..primitives.grid import QuantizedWeight, n_groups

__all__ = [
    "pack_gptq", "unpack_gptq", "pack_awq", "unpack_awq", "AWQ_ORDER",
    "pack_compressed_tensors", "unpack_compressed_tensors",
]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _check_word_bits(n_bits: int, layout: str) -> int:
    if n_bits not in (2, 4, 8):
        raise ValueError(f"n_bits={n_bits}: the {layout} layout packs 2, 4 or 8 bits per code "
                         "(3-bit GPTQ needs its own packing; use compressed-tensors for 3 bits)")
    return 32 // n_bits


def _pack_rows(q: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Pack (rows, cols) codes along rows: word r holds rows r·k … r·k+k−1, lowest bits first."""
    per = 32 // n_bits
    rows, cols = q.shape
    if rows % per:
        raise ValueError(f"{rows} rows are not a multiple of {per} codes per int32 word")
    q = q.to(torch.int64).reshape(rows // per, per, cols)  # (words, per, cols)
    shifts = (torch.arange(per, dtype=torch.int64) * n_bits).view(1, per, 1)
    words = (q << shifts).sum(dim=1)  # fits in 32 bits: the fields do not overlap
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_rows(words: torch.Tensor, n_bits: int) -> torch.Tensor:
    per = 32 // n_bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * n_bits).view(1, per, 1)
    q = (w.unsqueeze(1) >> shifts) & (2**n_bits - 1)  # (words, per, cols)
    return q.reshape(-1, words.shape[1]).to(torch.uint8)


def pack_gptq(qw: QuantizedWeight, version: int = 1) -> dict[str, torch.Tensor]:
    """``{'qweight', 'qzeros', 'scales', 'g_idx'}`` of one layer in the GPTQ layout (``version`` 1 or 2)."""
    _check_word_bits(qw.n_bits, "GPTQ")
    if version not in (1, 2):
        raise ValueError(f"version={version}: GPTQ checkpoints are format v1 or v2")
    zeros = qw.zero.to(torch.int64) - (1 if version == 1 else 0)
    # v1 keeps zero − 1 in b bits: a zero-point of 0 wraps to 2ᵇ − 1 (the original bug); loaders add 1 mod 2ᵇ
    zeros = zeros & (2**qw.n_bits - 1)
    return {
        "qweight": _pack_rows(qw.q.T, qw.n_bits),  # (in·b/32, out)
        "qzeros": _pack_rows(zeros, qw.n_bits).T.contiguous(),  # (n_groups, out·b/32)
        "scales": qw.scale.T.to(torch.float16).contiguous(),  # (n_groups, out)
        "g_idx": qw.g_idx.to(torch.int32).clone(),
    }


def unpack_gptq(tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None,
                version: int = 1) -> QuantizedWeight:
    """Inverse of ``pack_gptq`` (scales come back as the stored fp16 values, in float32)."""
    _check_word_bits(n_bits, "GPTQ")
    q = _unpack_rows(tensors["qweight"], n_bits).T.contiguous()  # (out, in)
    zeros = _unpack_rows(tensors["qzeros"].T.contiguous(), n_bits).to(torch.int64)  # (out, n_groups)
    if version == 1:
        zeros = (zeros + 1) & (2**n_bits - 1)
    scale = tensors["scales"].float().T.contiguous()
    return QuantizedWeight(q, scale, zeros.to(torch.uint8).contiguous(), tensors["g_idx"].to(torch.int32),
                           n_bits, group_size)


def _interleave(cols: torch.Tensor) -> torch.Tensor:
    """(rows, out) -> columns reordered so that packing 8 consecutive ones gives AWQ's order."""
    rows, out = cols.shape
    order = torch.tensor(AWQ_ORDER)
    return cols.reshape(rows, out // 8, 8)[:, :, order].reshape(rows, out)


def _deinterleave(cols: torch.Tensor) -> torch.Tensor:
    rows, out = cols.shape
    inverse = torch.argsort(torch.tensor(AWQ_ORDER))
    return cols.reshape(rows, out // 8, 8)[:, :, inverse].reshape(rows, out)


def pack_awq(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """``{'qweight', 'qzeros', 'scales'}`` of one layer in AWQ's GEMM layout (4-bit only)."""
    if qw.n_bits != 4:
        raise ValueError(f"n_bits={qw.n_bits}: AWQ's GEMM layout is 4-bit only")
    if qw.has_act_order:
        raise ValueError("AWQ checkpoints have no g_idx: act-order (reordered groups) cannot be stored")
    if qw.shape[0] % 8:
        raise ValueError(f"out_features={qw.shape[0]} is not a multiple of 8, as AWQ's packing needs")
    q = _interleave(qw.q.T.contiguous())  # (in, out)
    z = _interleave(qw.zero.T.contiguous())  # (n_groups, out)
    return {
        "qweight": _pack_rows(q.T.contiguous(), 4).T.contiguous(),  # (in, out/8)
        "qzeros": _pack_rows(z.T.contiguous(), 4).T.contiguous(),  # (n_groups, out/8)
        "scales": qw.scale.T.to(torch.float16).contiguous(),
    }


def unpack_awq(tensors: dict[str, torch.Tensor], group_size: int | None) -> QuantizedWeight:
    """Inverse of ``pack_awq``."""
    q = _deinterleave(_unpack_rows(tensors["qweight"].T.contiguous(), 4).T)  # (in, out)
    z = _deinterleave(_unpack_rows(tensors["qzeros"].T.contiguous(), 4).T)  # (n_groups, out)
    in_features = q.shape[0]
    gs = group_size or in_features
    g_idx = (torch.arange(in_features) // gs).to(torch.int32)
    return QuantizedWeight(q.T.contiguous(), tensors["scales"].float().T.contiguous(), z.T.contiguous(), g_idx,
                           4, group_size)


def _pack_dense(values: torch.Tensor, n_bits: int) -> torch.Tensor:
    """(rows, cols) of unsigned b-bit values -> (rows, ⌈cols·b/32⌉) int32, value i at bit i·b of the row."""
    rows, cols = values.shape
    n_words = -(-cols * n_bits // 32)
    bit = torch.arange(cols, dtype=torch.int64) * n_bits  # (cols,) first bit of each value
    v = values.to(torch.int64)
    words = torch.zeros(rows, n_words + 1, dtype=torch.int64)
    words.index_add_(1, bit // 32, (v << (bit % 32)) & 0xFFFFFFFF)
    words.index_add_(1, bit // 32 + 1, v >> (32 - bit % 32))  # the part that spills into the next word
    words = words[:, :n_words]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_dense(words: torch.Tensor, n_bits: int, cols: int) -> torch.Tensor:
    w = torch.cat([words.to(torch.int64) & 0xFFFFFFFF, torch.zeros(words.shape[0], 1, dtype=torch.int64)], dim=1)
    bit = torch.arange(cols, dtype=torch.int64) * n_bits
    lo = w[:, bit // 32] >> (bit % 32)
    hi = w[:, bit // 32 + 1] << (32 - bit % 32)
    return ((lo | hi) & (2**n_bits - 1)).to(torch.uint8)


def pack_compressed_tensors(qw: QuantizedWeight, symmetric: bool = False) -> dict[str, torch.Tensor]:
    """One layer's ``weight_packed``, ``weight_scale``, ``weight_shape`` (and ``weight_zero_point``).

    compressed-tensors has no act-order ``g_idx`` for this layout and needs
    ``group_size`` to divide ``in_features``. ``symmetric`` drops the zero-point,
    which must then be ``2ᵇ⁻¹`` everywhere.
    """
    out_features, in_features = qw.shape
    if qw.has_act_order:
        raise ValueError("compressed-tensors pack-quantized stores no g_idx: quantize with static_groups "
                         "(act-order that keeps groups contiguous) or without act-order")
    if qw.group_size is not None and in_features % qw.group_size:
        raise ValueError(f"group_size={qw.group_size} does not divide in_features={in_features}, "
                         "which compressed-tensors requires")
    mid = 2 ** (qw.n_bits - 1)
    tensors = {
        "weight_packed": _pack_dense(qw.q, qw.n_bits),
        "weight_scale": qw.scale.float().clone(),  # (out, n_groups)
        "weight_shape": torch.tensor([out_features, in_features]),
    }
    if symmetric:
        if not torch.all(qw.zero == mid):
            raise ValueError(f"symmetric=True needs every zero-point to be {mid}")
    else:
        # signed zero-points packed along the output dimension (packed_dim=0)
        tensors["weight_zero_point"] = _pack_dense(qw.zero.T.contiguous(), qw.n_bits).T.contiguous()
    return tensors


def unpack_compressed_tensors(tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> QuantizedWeight:
    """Inverse of ``pack_compressed_tensors``."""
    out_features, in_features = (int(v) for v in tensors["weight_shape"])
    q = _unpack_dense(tensors["weight_packed"], n_bits, in_features)
    scale = tensors["weight_scale"].float()
    groups = n_groups(in_features, group_size)
    if "weight_zero_point" in tensors:
        zero = _unpack_dense(tensors["weight_zero_point"].T.contiguous(), n_bits, out_features).T.contiguous()
    else:
        zero = torch.full((out_features, groups), 2 ** (n_bits - 1), dtype=torch.uint8)
    gs = group_size or in_features
    g_idx = (torch.arange(in_features) // gs).to(torch.int32)
    return QuantizedWeight(q, scale, zero, g_idx, n_bits, group_size)
