"""``W4A16Linear``: weight-only quantized linear layer held in the GPTQ-v2 packed layout.

Buffers (the GPTQ layout without v1's off-by-one, which is also what
:func:`qtutor.kernels.w4a16.w4a16_matmul` reads):

* ``qweight`` int32 (in·b/32, out): ``32/b`` codes of consecutive input rows per word;
* ``qzeros`` int32 (n_groups, out·b/32): zero-points packed along the output dimension;
* ``scales`` float16/bfloat16/float32 (n_groups, out);
* ``g_idx`` int32 (in,): the group of every input column (act-order reorders it).

``Ŵ[o, i] = scales[g_idx[i], o] · (q[o, i] − zero[o, g_idx[i]])``. By the rule of
:mod:`qtutor.nn._dispatch`, 4-bit layers fed fp16/bf16 on a GPU run the Triton
kernel; otherwise the weight is dequantized once, cached, and multiplied in PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RTNConfig
from ..primitives.grid import QuantizedWeight, n_groups, rtn_grid_quantize
from ..primitives.packing import pack, unpack
from ._dispatch import KERNEL_DTYPES, use_kernel

__all__ = ["W4A16Linear", "w4a16_kernel_linear", "w4a16_torch_linear"]

PACKED_BITS = (2, 4, 8)  # codes that fill an int32 word exactly


def w4a16_kernel_linear(x: torch.Tensor, layer: "W4A16Linear") -> torch.Tensor:
    """``x`` (..., in) fp16/bf16 through ``layer`` on the Triton kernel; (..., out) in ``x.dtype``."""
    from ..kernels.w4a16 import w4a16_matmul

    scales = layer.scales if layer.scales.dtype in KERNEL_DTYPES else layer.scales.to(x.dtype)  # float32 ones
    y = w4a16_matmul(x.reshape(-1, layer.in_features).contiguous(), layer.qweight, layer.qzeros,  # (tokens, in)
                     scales, layer.g_idx, group_size=layer.kernel_group)  # (tokens, out)
    if layer.bias is not None:
        y = y + layer.bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)  # (..., out)


def w4a16_torch_linear(x: torch.Tensor, layer: "W4A16Linear") -> torch.Tensor:
    """``x`` (..., in) of any float dtype through ``layer``'s dequantized (cached) weight, in PyTorch."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.dequantized_weight(x.dtype), bias)


class W4A16Linear(nn.Module):
    """``y = x Ŵᵀ + b`` with ``Ŵ`` held as packed b-bit codes (b = 2, 4 or 8), group scales and zero-points."""

    def __init__(self, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                 n_bits: int, group_size: int | None, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if n_bits not in PACKED_BITS:
            raise ValueError(f"n_bits={n_bits!r}: W4A16Linear packs {PACKED_BITS} bits per code "
                             "(whole codes per int32 word)")
        per = 32 // n_bits
        if qweight.dtype != torch.int32 or qweight.ndim != 2:
            raise ValueError(f"qweight must be 2-D int32 (in·{n_bits}/32, out), got {qweight.dtype} {tuple(qweight.shape)}")
        self.in_features, self.out_features = qweight.shape[0] * per, qweight.shape[1]
        self.n_bits, self.group_size = n_bits, group_size
        groups = n_groups(self.in_features, group_size)
        expected = {"qzeros": ((groups, -(-self.out_features // per)), (torch.int32,)),
                    "scales": ((groups, self.out_features), (torch.float16, torch.bfloat16, torch.float32)),
                    "g_idx": ((self.in_features,), (torch.int32,))}
        given = {"qzeros": qzeros, "scales": scales, "g_idx": g_idx}
        for name, (shape, dtypes) in expected.items():
            t = given[name]
            if tuple(t.shape) != shape or t.dtype not in dtypes:
                raise ValueError(f"{name} must be {' or '.join(map(str, dtypes))} {shape} for a ({self.out_features}, "
                                 f"{self.in_features}) {n_bits}-bit layer with group_size={group_size}, "
                                 f"got {t.dtype} {tuple(t.shape)}")
        if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
            raise ValueError(f"g_idx values must lie in [0, {groups}), got [{int(g_idx.min())}, {int(g_idx.max())}]")
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        for name, t in (("qweight", qweight), *given.items()):
            self.register_buffer(name, t.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._dense: torch.Tensor | None = None
        gs = group_size or self.in_features
        act_order = not torch.equal(g_idx.long().cpu(), torch.arange(self.in_features) // gs)
        # what the kernel needs to know without inspecting g_idx: 0 = act-order (any group per row)
        self.kernel_group = 0 if act_order else gs

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> "W4A16Linear":
        """From a GPTQ-v2 checkpoint's tensors of one layer (``qweight``, ``qzeros``, ``scales``, ``g_idx``,
        optional ``bias``) as they are in the file: no unpacking, no repacking."""
        return cls(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], n_bits, group_size,
                   tensors.get("bias"))

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                       scale_dtype: torch.dtype = torch.float16) -> "W4A16Linear":
        """Pack a :class:`~qtutor.primitives.QuantizedWeight` (e.g. a GPTQ or AWQ result) with
        :func:`qtutor.primitives.pack`, on the weight's device."""
        if qw.n_bits not in PACKED_BITS:
            raise ValueError(f"n_bits={qw.n_bits}: W4A16Linear packs {PACKED_BITS} bits per code")
        # GPTQ's words: 32/b codes of consecutive inputs (qweight) or outputs (qzeros), lowest bits first
        qweight = pack(qw.q, qw.n_bits, torch.int32).T.contiguous()  # (out, in·b/32) -> (in·b/32, out)
        qzeros = pack(qw.zero.T.contiguous(), qw.n_bits, torch.int32)  # (n_groups, out·b/32)
        scales = qw.scale.T.to(scale_dtype).contiguous()  # (n_groups, out)
        return cls(qweight, qzeros, scales, qw.g_idx.to(torch.int32), qw.n_bits, qw.group_size,
                   None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: RTNConfig = RTNConfig(),
                    scale_dtype: torch.dtype = torch.float16) -> "W4A16Linear":
        """Round ``linear``'s weight to the grid of ``config`` (round-to-nearest) and pack it."""
        qw = rtn_grid_quantize(linear.weight.detach(), config.n_bits, config.group_size, config.symmetric)
        return cls.from_quantized(qw, linear.bias, scale_dtype)

    def quantized_weight(self) -> QuantizedWeight:
        """The codes, float32 scales and zero-points, unpacked."""
        q = unpack(self.qweight.T.contiguous(), self.n_bits)  # (out, in)
        zero = unpack(self.qzeros, self.n_bits)[:, : self.out_features].T.contiguous()  # (out, n_groups)
        return QuantizedWeight(q, self.scales.float().T.contiguous(), zero, self.g_idx, self.n_bits, self.group_size)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``Ŵ`` (out, in) in ``dtype``, computed once per dtype and device and cached."""
        if self._dense is None or self._dense.dtype != dtype or self._dense.device != self.qweight.device:
            self._dense = self.quantized_weight().to(self.qweight.device).dequantize(dtype)
        return self._dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (w4a16_kernel_linear if use_kernel(x, supported=self.n_bits == 4) else w4a16_torch_linear)(x, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n_bits={self.n_bits}, "
                f"group_size={self.group_size}")
