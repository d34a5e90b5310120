"""Training through rounding: the straight-through estimator (STE), its clipped form, and LSQ's learnable scales.

``round`` has zero gradient almost everywhere, so quantization-aware training (QAT) pretends it is the identity
in the backward pass (Bengio et al. 2013, "straight-through"). For a uniform quantizer
``x̂ = s · clamp(round(x / s), q_min, q_max)``:

* **plain STE**: ``∂x̂/∂x = 1`` everywhere;
* **clipped STE** (the usual QAT choice, PyTorch's ``FakeQuantize`` and torchao's QAT): ``∂x̂/∂x = 1`` where
  ``q_min ≤ x/s ≤ q_max`` and 0 where the value was clipped (its output no longer moves with it);
* **LSQ** (Esser et al., "Learned Step Size Quantization", ICLR 2020) also learns ``s``:
  ``∂x̂/∂s = round(v) − v`` inside the range (``v = x/s``), ``q_min`` or ``q_max`` where clipped, and scales that
  gradient by ``g = 1 / √(N · q_max)`` (``N`` elements per scale) so the step size learns at the weights' pace.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ste_round", "fake_quant_ste", "LSQFakeQuant", "zo_minimize"]


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward (plain STE)."""
    return x + (torch.round(x) - x).detach()


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, q_min, q_max, grad_scale):
        v = x / scale
        q = torch.clamp(torch.round(v), q_min, q_max)
        ctx.save_for_backward(v, q)
        ctx.q_min, ctx.q_max, ctx.grad_scale = q_min, q_max, grad_scale
        ctx.scale_shape = scale.shape
        return q * scale

    @staticmethod
    def backward(ctx, grad):
        v, q = ctx.saved_tensors
        inside = (v >= ctx.q_min) & (v <= ctx.q_max)
        grad_x = grad * inside
        # LSQ: d(q·s)/ds with q = clamp(round(v)) and v = x/s, rounding treated as identity
        d_s = torch.where(inside, q - v, q)  # q − v inside; q_min or q_max (= q) where clipped
        grad_s = grad * d_s * ctx.grad_scale
        # sum over the broadcast dims down to the scale's shape
        while grad_s.dim() > len(ctx.scale_shape):
            grad_s = grad_s.sum(0)
        for i, n in enumerate(ctx.scale_shape):
            if n == 1 and grad_s.shape[i] != 1:
                grad_s = grad_s.sum(i, keepdim=True)
        return grad_x, grad_s, None, None, None


def _check_bits(n_bits: int) -> None:
    if not isinstance(n_bits, int) or isinstance(n_bits, bool) or not 2 <= n_bits <= 8:
        raise ValueError(f"n_bits={n_bits!r}: must be an integer from 2 to 8")


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor, n_bits: int, grad_scale: float = 1.0) -> torch.Tensor:
    """Symmetric fake quantization ``s · clamp(round(x/s), −(2ᵇ⁻¹−1), 2ᵇ⁻¹−1)`` with the clipped STE for ``x`` and
    LSQ's gradient (times ``grad_scale``) for ``scale``; ``scale`` broadcasts against ``x`` and must be positive."""
    _check_bits(n_bits)
    if not isinstance(scale, torch.Tensor):
        scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if not bool((scale.detach() > 0).all()) or not bool(torch.isfinite(scale.detach()).all()):
        raise ValueError("scale must be positive and finite everywhere (a zero scale divides by zero)")
    q_max = 2 ** (n_bits - 1) - 1
    return _FakeQuantSTE.apply(x, scale, -q_max, q_max, grad_scale)


class LSQFakeQuant(nn.Module):
    """A learnable-step-size fake quantizer for a weight ``(out, in)``: one scale per output row (``per_row``) or one.

    Initialized from the weight (LSQ's ``2 · mean|w| / √q_max``, or ``max|w| / q_max`` with ``init='absmax'``);
    the scale's gradient is multiplied by LSQ's ``1 / √(N · q_max)``.
    """

    def __init__(self, weight: torch.Tensor, n_bits: int = 4, per_row: bool = True, init: str = "absmax") -> None:
        super().__init__()
        _check_bits(n_bits)
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        if init not in ("absmax", "lsq"):
            raise ValueError(f"init={init!r}: allowed 'absmax', 'lsq'")
        self.n_bits, self.q_max = n_bits, 2 ** (n_bits - 1) - 1
        w = weight.detach().float()
        dims = (1,) if per_row else (0, 1)
        s = w.abs().amax(dim=dims, keepdim=True) / self.q_max if init == "absmax" else \
            2 * w.abs().mean(dim=dims, keepdim=True) / math.sqrt(self.q_max)
        self.scale = nn.Parameter(torch.where(s > 0, s, torch.ones_like(s)))
        self.n_per_scale = w.shape[1] if per_row else w.numel()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        g = 1.0 / math.sqrt(self.n_per_scale * self.q_max)
        return fake_quant_ste(w, self.scale.to(w.dtype), self.n_bits, grad_scale=g)


# --------------------------------------------------------------------------- forward-only (zeroth-order) training

def zo_minimize(loss_fn, params: list[torch.Tensor], steps: int, lr: float, eps: float = 1e-3, seed: int = 0,
                ) -> list[float]:
    """Minimize ``loss_fn()`` over ``params`` (tensors, changed in place) with forward passes only.

    MeZO's two-point SPSA estimate (Malladi et al., "Fine-Tuning Language Models with Just Forward Passes",
    NeurIPS 2023): draw ``z ~ N(0, I)`` from a seeded generator, evaluate ``L(θ + εz)`` and ``L(θ − εz)``,
    and step ``θ ← θ − lr · (L₊ − L₋) / (2ε) · z``. The perturbation is regenerated from its seed instead of
    stored, so the memory is the parameters plus one forward pass — no activations kept for a backward pass,
    no gradients, no optimizer state. Returns the mean of ``L₊`` and ``L₋`` per step.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a positive integer")
    for name, v in (("lr", lr), ("eps", eps)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}={v!r}: must be a positive finite number")
    if not params or not all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in params):
        raise ValueError("params must be a non-empty list of floating-point tensors")

    def perturb(step_seed: int, scale: float) -> None:
        g = torch.Generator().manual_seed(step_seed)
        for p in params:
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p) * scale)

    history = []
    with torch.no_grad():
        for step in range(steps):
            s = seed * 1_000_003 + step
            perturb(s, eps)
            plus = float(loss_fn())
            perturb(s, -2 * eps)
            minus = float(loss_fn())
            perturb(s, eps)  # back to θ
            if not (math.isfinite(plus) and math.isfinite(minus)):
                raise ValueError(f"step {step}: the loss is not finite ({plus}, {minus}): lower eps or lr")
            perturb(s, -lr * (plus - minus) / (2 * eps))
            history.append((plus + minus) / 2)
    return history
