"""The weight grid GPTQ, AWQ and their checkpoints share: unsigned codes, group scales, integer zero-points.

A quantized weight ``W`` of shape (out_features, in_features) is stored as

* ``q``: codes in ``0 … 2ᵇ−1``, uint8, (out, in);
* ``scale``: float32, (out, n_groups);
* ``zero``: integer zero-points in ``0 … 2ᵇ−1``, uint8, (out, n_groups);
* ``g_idx``: the group of every input column, int32, (in,) — ``column // group_size``
  unless GPTQ's act-order reordered the columns;

and ``Ŵ[i, j] = scale[i, g_idx[j]] · (q[i, j] − zero[i, g_idx[j]])``. This is the
data the GPTQ, AWQ and compressed-tensors layouts pack (``qtutor.formats``) and
the W4A16 kernels read. When ``group_size`` does not divide ``in_features``
(SmolLM2's 576 = 4.5 × 128) the last group is shorter, as in GPTQ's reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .spec import check_group_size, check_n_bits_group_size

__all__ = ["QuantizedWeight", "check_group_size", "check_n_bits_group_size", "group_min_max", "n_groups", "rtn_grid_quantize"]

_F32_MAX = torch.finfo(torch.float32).max


def n_groups(in_features: int, group_size: int | None) -> int:
    """Number of groups along the input dimension (the last one may be short); ``None``: one group."""
    check_group_size(group_size)
    return 1 if group_size is None else -(-in_features // group_size)


def group_min_max(w: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``(min, max)`` of ``w`` (out, in) -> two (out, n_groups) tensors; a short last group is allowed.

    Computed in ``w``'s dtype (no arithmetic, so nothing can overflow here).
    """
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got {tuple(w.shape)}")
    check_group_size(group_size)
    out_features, in_features = w.shape
    if in_features == 0:
        raise ValueError(f"w has shape {tuple(w.shape)}: no input features to take a min and max over")
    gs = group_size or in_features
    pad = n_groups(in_features, gs) * gs - in_features
    # replicating the last column leaves every group's min and max unchanged
    wp = F.pad(w.unsqueeze(0), (0, pad), mode="replicate")[0] if pad else w
    wg = wp.reshape(out_features, -1, gs)  # (out, n_groups, gs)
    return wg.amin(dim=-1), wg.amax(dim=-1)


@dataclass
class QuantizedWeight:
    """Codes, scales, zero-points and group index of one linear layer's weight."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    n_bits: int
    group_size: int | None

    def __post_init__(self) -> None:
        out_features, in_features = self.q.shape
        if self.scale.shape != self.zero.shape or self.scale.shape[0] != out_features:
            raise ValueError(f"scale {tuple(self.scale.shape)} and zero {tuple(self.zero.shape)} "
                             f"must both be ({out_features}, n_groups)")
        if self.g_idx.shape != (in_features,):
            raise ValueError(f"g_idx has shape {tuple(self.g_idx.shape)}, expected ({in_features},)")
        if not 2 <= self.n_bits <= 8:
            raise ValueError(f"n_bits={self.n_bits}: must be from 2 to 8")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def has_act_order(self) -> bool:
        """True when ``g_idx`` is not simply ``column // group_size``."""
        gs = self.group_size or self.shape[1]
        expected = torch.arange(self.shape[1], device=self.g_idx.device) // gs
        return not torch.equal(self.g_idx.long(), expected)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale[:, g_idx] · (q − zero[:, g_idx])``: (out, in)."""
        g = self.g_idx.long()
        scale = self.scale.float()[:, g]
        zero = self.zero.float()[:, g]
        return (scale * (self.q.float() - zero)).to(dtype)

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        return QuantizedWeight(self.q.to(device), self.scale.to(device), self.zero.to(device),
                               self.g_idx.to(device), self.n_bits, self.group_size)


def rtn_grid_quantize(w: torch.Tensor, n_bits: int, group_size: int | None, symmetric: bool = False) -> QuantizedWeight:
    """Round-to-nearest on the shared grid: min-max per group, integer zero-point.

    Asymmetric: the range is *not* widened to include 0 and the scale is clamped
    at 1e-5 — AWQ's ``pseudo_quantize_tensor``, so AWQ at α = 0 without clipping
    is exactly this. ``symmetric=True``: GPTQ's symmetric grid, ``scale = 2·max|w| / (2ᵇ−1)``
    and the zero-point fixed at ``2ᵇ⁻¹`` (what compressed-tensors stores without a zero-point).

    Unlike ``fake_quant(w, QuantSpec(n_bits, symmetric=False, granularity=PerGroup(g)))``,
    which widens ``[min, max]`` to include 0 and gives an all-zero group ``scale = 0``:
    the two agree exactly on every group that holds both signs with ``max − min ≥ 1e-5``
    (every group of a real weight), and differ on one-signed or constant groups. The
    symmetric grids differ everywhere (``QuantSpec``'s codes are signed, ±(2ᵇ⁻¹−1)).

    ``group_size``: a positive integer or ``None`` (one group per row), never 0 or -1.
    Computed in float32: a finite ``w`` whose range overflows float32 (``1e300`` in
    float64, ``max − min`` of ``±3e38``) raises ``ValueError`` instead of giving NaN.
    """
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got {tuple(w.shape)}")
    check_n_bits_group_size(n_bits, group_size)
    if not w.is_floating_point():
        raise ValueError(f"w has dtype {w.dtype}: quantize floating-point weights, not integer codes")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or Inf; quantizing it would give a silent wrong answer")
    if w.numel() and float(w.abs().max()) > _F32_MAX:
        raise ValueError(f"w holds |values| up to {float(w.abs().max()):.3g}, beyond float32's largest finite value "
                         f"({_F32_MAX:.3g}) in which the grid is computed; rescale w first")
    w = w.float()
    maxq = 2**n_bits - 1
    wmin, wmax = group_min_max(w, group_size)
    if symmetric:
        wmax = torch.maximum(wmin.abs(), wmax).clamp(min=1e-5)
        scale = 2 * wmax / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        scale = (wmax - wmin).clamp(min=1e-5) / maxq  # (out, n_groups)
        zero = (-torch.round(wmin / scale)).clamp(0, maxq)
    # the grid's end points (codes 0 and 2ᵇ−1) must be finite: max − min, or 2·max|w|, can overflow float32
    ends = (scale, scale * (0 - zero), scale * (maxq - zero))
    bad = ~(torch.isfinite(ends[0]) & torch.isfinite(ends[1]) & torch.isfinite(ends[2]))
    if bool(bad.any()):
        r, g = bad.nonzero()[0].tolist()
        raise ValueError(f"w's range in row {r}, group {g} (min {float(wmin[r, g]):.3g}, max {float(wmax[r, g]):.3g}) "
                         f"overflows float32: the {'symmetric ' if symmetric else ''}scale or the grid's end points "
                         "would be Inf/NaN; rescale w first")
    gs = group_size or w.shape[1]
    g_idx = (torch.arange(w.shape[1], device=w.device) // gs).to(torch.int32)
    g = g_idx.long()
    q = torch.clamp(torch.round(w / scale[:, g]) + zero[:, g], 0, maxq)
    return QuantizedWeight(q.to(torch.uint8), scale, zero.to(torch.uint8), g_idx, n_bits, group_size)
