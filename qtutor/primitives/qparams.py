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
* ``PerGroup(g, axis)``: ``S`` with ``S[axis]`` replaced by ``ceil(S[axis] / g)`` (a short
  last group when ``g`` does not divide ``S[axis]``, as in GPTQ's reference)

Scales are computed in float32. A finite input whose range does not fit float32
(``1e300`` in float64, or ``max − min`` of ``±3e38``) raises ``ValueError`` with the
reason instead of turning into NaN.

How the asymmetric integer grid here differs from :func:`qtutor.primitives.grid.rtn_grid_quantize`
(GPTQ's and AWQ's grid): here ``[min, max]`` is widened to include 0 (so that 0.0 is
exact, as in PyTorch and GPTQ's ``find_params``) and an all-zero group gets
``scale = 0``; ``rtn_grid_quantize`` keeps ``[min, max]`` (AWQ's
``pseudo_quantize_tensor``) and clamps the scale at 1e-5. On a group that holds
both signs with ``max − min ≥ 1e-5`` — every group of a real weight — the two give
the same codes, scales and zero-points. The symmetric grids differ: here codes are
signed, ``[−(2ᵇ⁻¹−1), 2ᵇ⁻¹−1]`` with ``scale = max|x| / (2ᵇ⁻¹−1)``; there they are
GPTQ's unsigned codes with the zero-point at ``2ᵇ⁻¹`` and ``scale = 2·max|x| / (2ᵇ−1)``.
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


_F32_MAX = torch.finfo(torch.float32).max


def _check_fits_float32(x: torch.Tensor, name: str = "x") -> None:
    """Raise unless the finite ``x`` stays finite in float32, where scales are computed."""
    if x.dtype == torch.float64 and x.numel() and float(x.abs().max()) > _F32_MAX:
        raise ValueError(
            f"{name} holds |values| up to {float(x.abs().max()):.3g}, beyond float32's largest finite value "
            f"({_F32_MAX:.3g}) in which scales are computed: they would become Inf/NaN; rescale {name} first"
        )


def _check_grid_finite(ends: list[torch.Tensor], xmin: torch.Tensor, xmax: torch.Tensor, what: str) -> None:
    """Raise if a scale, offset or end point of the grid overflowed float32 although ``x`` was finite."""
    bad = torch.zeros_like(ends[0], dtype=torch.bool)
    for e in ends:
        bad |= ~torch.isfinite(e)
    if bool(bad.any()):
        i = bad.nonzero()[0]
        lo, hi = float(xmin[tuple(i)]), float(xmax[tuple(i)])
        raise ValueError(
            f"the range of x (min {lo:.3g}, max {hi:.3g} in one {what}) overflows float32: the scale or the "
            "grid's end points would be Inf/NaN; rescale x (e.g. divide it by a power of two) first"
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
        n = -(-size // g.group_size)  # groups, the last one possibly short
        pad = n * g.group_size - size
        if pad:
            # a short last group: replicating its last element leaves its min, max and max|x| unchanged
            last = x.narrow(a, size - 1, 1)
            x = torch.cat([x, last.expand(*(pad if d == a else -1 for d in range(x.ndim)))], dim=a)
        # (..., n·g, ...) -> (..., n, g, ...)
        xv = x.unflatten(a, (n, g.group_size))
        return xv, (a + 1,)
    raise ValueError(f"unknown granularity {g!r}")


def _ungrouped(v: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The inverse of :func:`_grouped`'s view: back to ``x``'s shape, dropping a short group's padding."""
    g = spec.granularity
    if isinstance(g, PerGroup):
        a = _axis(x, g.axis)
        return v.flatten(a, a + 1).narrow(a, 0, x.shape[a])  # (..., n, g, ...) -> (..., size, ...)
    return v.reshape(x.shape)


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
    _check_fits_float32(x)
    xv, dims = _grouped(x.float(), spec)
    r = float(spec.clip_ratio)
    what = type(spec.granularity).__name__
    if spec.symmetric:
        amax = xv.abs().amax(dim=dims, keepdim=True) * r
        scale = amax / spec.qmax
        _check_grid_finite([scale * spec.qmax], -amax, amax, what)  # the end code can round past max|x|
        return QParams(scale=_public_shape(scale, x, spec))
    xmin = xv.amin(dim=dims, keepdim=True)
    xmax = xv.amax(dim=dims, keepdim=True)
    if spec.has_integer_zero_point:
        # the grid must hold 0.0 exactly (zero padding, ReLU zeros), as in PyTorch and GPTQ
        xmin, xmax = xmin.clamp(max=0) * r, xmax.clamp(min=0) * r
        scale = (xmax - xmin) / spec.qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.round(-xmin / safe).clamp(0, spec.qmax)
        zp = torch.where(scale > 0, zp, torch.zeros_like(zp)).to(torch.int32)
        _check_grid_finite([scale, (0 - zp) * scale, (spec.qmax - zp) * scale], xmin, xmax, what)
        return QParams(_public_shape(scale, x, spec), zero_point=_public_shape(zp, x, spec))
    # float offset (GGUF Q4_1 style): the grid spans [min, max]; 0.0 need not be on it
    mid = (xmax + xmin) / 2
    xmin, xmax = mid + (xmin - mid) * r, mid + (xmax - mid) * r
    scale = (xmax - xmin) / spec.qmax
    _check_grid_finite([scale, xmin, scale * spec.qmax + xmin], xv.amin(dim=dims, keepdim=True),
                       xv.amax(dim=dims, keepdim=True), what)
    return QParams(_public_shape(scale, x, spec), offset=_public_shape(xmin, x, spec))


def quantize(x: torch.Tensor, qparams: QParams, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of ``x``: same shape as ``x``; int8 if symmetric, else uint8.

    Rounding is round-half-to-even (``torch.round``), as in GPTQ's reference.
    """
    check_float_tensor(x)
    _check_fits_float32(x)
    xv, _ = _grouped(x.float(), spec)
    scale = _broadcastable(qparams.scale, x, spec)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if spec.symmetric:
        q = torch.round(xv / safe)
    elif spec.has_integer_zero_point:
        q = torch.round(xv / safe) + _broadcastable(qparams.zero_point, x, spec)
    else:
        q = torch.round((xv - _broadcastable(qparams.offset, x, spec)) / safe)
    q = _ungrouped(q.clamp(spec.qmin, spec.qmax), x, spec)
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
    return _ungrouped(x, q, spec).to(dtype)


def fake_quant(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``dequantize(quantize(x))`` with min-max parameters, in ``x``'s dtype."""
    qp = choose_qparams(x, spec)
    return dequantize(quantize(x, qp, spec), qp, spec, dtype=x.dtype)
