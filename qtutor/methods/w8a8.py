"""W8A8: int8 weights (per output channel) and int8 activations (static per tensor or dynamic per token).

Two phases, as everywhere in qtutor: :func:`quantize_weight_int8` produces the
quantized state, :class:`qtutor.nn.W8A8Linear` runs it.  On a GPU the matmul runs in the
Triton kernel of :mod:`qtutor.kernels.w8a8`; on a CPU it uses the same integer
arithmetic through :func:`qtutor.primitives.int8_mm` (exact; ``torch._int_mm`` or a float
matmul, whichever is faster on this CPU).

Asymmetric activations need a correction term.  With ``x = s_x (q_x − z_x)``
and ``w = s_w q_w``::

    y = s_x s_w (q_x q_wᵀ − z_x Σ_k q_w[n, k])

— the cross term ``z_x · rowsum(q_w)`` is computed once per weight
(:func:`int8_matmul_asym_ref`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..primitives.intmm import int8_mm
from ..kernels.w8a8 import check_operands, int8_matmul, quantize_per_token_ref, w8a8_dynamic

__all__ = [
    "ActQuant",
    "quantize_weight_int8",
    "int8_matmul_asym_ref",
    "w8a8_linear",
]


@dataclass(frozen=True)
class ActQuant:
    """How activations are quantized: ``static_scale=None`` for dynamic per-token scales."""

    static_scale: float | None = None

    def __post_init__(self) -> None:
        if self.static_scale is not None and not self.static_scale > 0:
            raise ValueError(f"static_scale={self.static_scale}: must be positive (or None for dynamic)")


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (N, K) float -> codes (N, K) int8 and per-output-channel scales (N,) float32."""
    return quantize_per_token_ref(w)  # per row of w = per output channel: the same arithmetic


def int8_matmul_asym_ref(
    q_x: torch.Tensor, z_x: torch.Tensor, s_x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor
) -> torch.Tensor:
    """Asymmetric uint8 activations (M, K) with zero-points (M,), symmetric int8 weights (N, K)."""
    acc = q_x.double() @ q_w.double().T  # (M, N), exact integers in float64
    cross = z_x.double()[:, None] * q_w.double().sum(1)[None, :]  # (M, N)
    return (acc - cross).float() * s_x.float()[:, None] * s_w.float()[None, :]


def w8a8_linear(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, act: ActQuant,
                kernel: bool | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (..., K) float through the int8 weight ``q_w`` (N, K), plus ``bias``; output (..., N) in ``x.dtype``.

    ``kernel``: run the Triton kernels of :mod:`qtutor.kernels.w8a8` (None: when ``x`` is on a GPU);
    otherwise the same integer arithmetic in PyTorch (:func:`qtutor.primitives.int8_mm`). Both paths
    check the operands the same way (the kernels' :func:`~qtutor.kernels.w8a8.check_operands`: ``x``
    float16/bfloat16/float32 with ``q_w``'s K, ``q_w`` int8, ``s_w`` float (N,)), raising ``ValueError``;
    no tokens (``x`` of shape (..., 0, K)) give an empty (..., 0, N) result.
    """
    kernel = x.is_cuda if kernel is None else kernel
    y = _w8a8_matmul(x, q_w, s_w, act, kernel)
    return y if bias is None else y + bias


def _w8a8_matmul(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, act: ActQuant, kernel: bool) -> torch.Tensor:
    check_operands(x, q_w, s_w)  # the kernel path's checks, on every path
    if q_w.dtype != torch.int8:  # the kernels also take fp8 codes; FP8 layers run qtutor.methods.fp8
        raise ValueError(f"q_w has dtype {q_w.dtype}: W8A8 multiplies int8 codes (fp8: qtutor.methods.fp8)")
    N = q_w.shape[0]
    x2 = x.reshape(-1, x.shape[-1])  # (tokens, K)
    if kernel and act.static_scale is None:
        return w8a8_dynamic(x2.contiguous(), q_w, s_w).reshape(*x.shape[:-1], N)  # (..., N): N, not -1, for 0 tokens
    if act.static_scale is None:
        q_x, s_x = quantize_per_token_ref(x2)
    else:
        s = torch.full((x2.shape[0],), act.static_scale, dtype=torch.float32, device=x.device)
        q_x = torch.round(x2.float() / act.static_scale).clamp(-127, 127).to(torch.int8)
        s_x = s
    if kernel:
        y = int8_matmul(q_x, q_w, s_x, s_w, out_dtype=torch.float32)
    else:
        y = int8_mm(q_x, q_w.T).float() * s_x[:, None] * s_w[None, :]
    return y.to(x.dtype).reshape(*x.shape[:-1], N)  # (..., N)
