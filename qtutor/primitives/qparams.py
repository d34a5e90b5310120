"""Scale, zero-point, quantize, dequantize: the uniform affine mapping.

    q      = clamp(round(x / scale) + zero_point, qmin, qmax)     (integer zero-point)
    x_hat  = (q - zero_point) * scale

    q      = clamp(round((x - offset) / scale), 0, qmax)         (float offset, GGUF)
    x_hat  = q * scale + offset

Symmetric grids have no zero-point: ``x_hat = q * scale``.  See Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (2018), eq. 1, and llama.cpp's ``quantize_row_q4_1`` for the
float-offset form.

Shapes of the parameters returned by :func:`choose_qparams` for ``x`` of shape
``S``:

* ``PerTensor``: ``()``
* ``PerChannel(axis)``: ``S`` with every dimension but ``axis`` set to 1
* ``PerToken``: ``S[:-1] + (1,)``
* ``PerGroup(g, axis)``: ``S`` with ``S[axis]`` replaced by ``S[axis] // g``
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec

__all__ = [
    "QParams",
    "check_float_tensor",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quant",
]


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor.

    ``scale`` is float32.  ``zero_point`` (int32 codes) is set for asymmetric
    integer grids, ``offset`` (float32) for asymmetric float-offset grids;
    both are ``None`` for symmetric grids.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor | None = None
    offset: torch.Tensor | None = None


def check_float_tensor(x: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a finite floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} has dtype {x.dtype}: quantize floating-point tensors "
            "(float32, float16 or bfloat16), not integer codes"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        n_bad = int((~finite).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or Inf value(s), the first at index {bad}: "
            "a scale computed from it would be NaN/Inf; clean the tensor first"
        )


def _axis(x: torch.Tensor, axis: int, name: str = "axis") -> int:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}={axis}: out of range for a tensor with {x.ndim} dims")
    return axis % x.ndim


def _grouped(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A view of ``x`` and the dims to reduce so that each reduction is one group."""
    g = spec.granularity
    if isinstance(g, PerTensor):
        return x, tuple(range(x.ndim))
    if isinstance(g, PerChannel):
        a = _axis(x, g.axis)
        return x, tuple(d for d in range(x.ndim) if d != a)
    if isinstance(g, PerToken):
        if x.ndim < 2:
            raise ValueError(f"PerToken needs x of shape (..., hidden); got shape {tuple(x.shape)}")
        return x, (x.ndim - 1,)
    if isinstance(g, PerGroup):
        a = _axis(x, g.axis)
        size = x.shape[a]
        if size % g.group_size:
            raise ValueError(
                f"group_size={g.group_size} does not divide dimension {a} of x "
                f"(size {size}, shape {tuple(x.shape)}); allowed: a divisor of {size}, "
                "e.g. " + ", ".join(str(d) for d in (32, 64, 128, 256) if size % d == 0)
            )
        # (..., size, ...) -> (..., size // g, g, ...)
        xv = x.unflatten(a, (size // g.group_size, g.group_size))
        return xv, (a + 1,)
    raise ValueError(f"unknown granularity {g!r}")


def _public_shape(p: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    g = spec.granularity
    if isinstance(g, PerTensor):
        return p.reshape(())
    if isinstance(g, PerGroup):
        return p.squeeze(_axis(x, g.axis) + 1)
    return p


def _broadcastable(p: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    g = spec.granularity
    if isinstance(g, PerGroup):
        return p.unsqueeze(_axis(x, g.axis) + 1)
    return p


def choose_qparams(x: torch.Tensor, spec: QuantSpec) -> QParams:
    """Min-max scale (and zero-point or offset) of ``x`` under ``spec``.

    Args:
        x: floating tensor of any shape, finite.
        spec: the scheme; see the module docstring for the parameter shapes.

    An all-zero group (or a constant group on a float-offset grid) gets
    ``scale = 0``; :func:`quantize` maps it to code 0 without dividing by zero.
    """
    check_float_tensor(x)
    xv, dims = _grouped(x.float(), spec)
    r = float(spec.clip_ratio)
    if spec.symmetric:
        amax = xv.abs().amax(dim=dims, keepdim=True) * r
        return QParams(scale=_public_shape(amax / spec.qmax, x, spec))
    xmin = xv.amin(dim=dims, keepdim=True)
    xmax = xv.amax(dim=dims, keepdim=True)
    if spec.has_integer_zero_point:
        # the grid must hold 0.0 exactly (zero padding, ReLU zeros), as in PyTorch and GPTQ
        xmin, xmax = xmin.clamp(max=0) * r, xmax.clamp(min=0) * r
        scale = (xmax - xmin) / spec.qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.round(-xmin / safe).clamp(0, spec.qmax)
        zp = torch.where(scale > 0, zp, torch.zeros_like(zp)).to(torch.int32)
        return QParams(_public_shape(scale, x, spec), zero_point=_public_shape(zp, x, spec))
    # float offset (GGUF Q4_1 style): the grid spans [min, max]; 0.0 need not be on it
    mid = (xmax + xmin) / 2
    xmin, xmax = mid + (xmin - mid) * r, mid + (xmax - mid) * r
    scale = (xmax - xmin) / spec.qmax
    return QParams(_public_shape(scale, x, spec), offset=_public_shape(xmin, x, spec))


def quantize(x: torch.Tensor, qparams: QParams, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of ``x``: same shape as ``x``; int8 if symmetric, else uint8.

    Rounding is round-half-to-even (``torch.round``), as in GPTQ's reference.
    """
    check_float_tensor(x)
    xv, _ = _grouped(x.float(), spec)
    scale = _broadcastable(qparams.scale, x, spec)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if spec.symmetric:
        q = torch.round(xv / safe)
    elif spec.has_integer_zero_point:
        q = torch.round(xv / safe) + _broadcastable(qparams.zero_point, x, spec)
    else:
        q = torch.round((xv - _broadcastable(qparams.offset, x, spec)) / safe)
    q = q.clamp(spec.qmin, spec.qmax).reshape(x.shape)
    return q.to(torch.int8 if spec.symmetric else torch.uint8)


def dequantize(
    q: torch.Tensor, qparams: QParams, spec: QuantSpec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Float values of codes ``q`` (any shape accepted by ``spec``), as ``dtype``."""
    if q.is_floating_point():
        raise ValueError(f"q has dtype {q.dtype}: dequantize takes integer codes")
    qv, _ = _grouped(q.float(), spec)
    scale = _broadcastable(qparams.scale, q, spec)
    if spec.has_integer_zero_point:
        x = (qv - _broadcastable(qparams.zero_point, q, spec)) * scale
    elif spec.has_offset:
        x = qv * scale + _broadcastable(qparams.offset, q, spec)
    else:
        x = qv * scale
    return x.reshape(q.shape).to(dtype)


def fake_quant(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``dequantize(quantize(x))`` with min-max parameters, in ``x``'s dtype."""
    qp = choose_qparams(x, spec)
    return dequantize(quantize(x, qp, spec), qp, spec, dtype=x.dtype)
