"""FlatQuant's idea on one linear layer: learn the invertible transform instead of fixing a Hadamard.

Sun et al., "FlatQuant: Flatness Matters for LLM Quantization" (ICML 2025; github.com/ruikangliu/FlatQuant).
For ``y = x Wᵀ`` and any invertible ``P``, ``y = (x P)(W P⁻ᵀ)ᵀ``: quantize ``x P`` and ``W P⁻ᵀ`` instead of
``x`` and ``W``. QuaRot fixes ``P`` to a Hadamard; FlatQuant *learns* it per layer, Kronecker-factored
(``P = P₁ ⊗ P₂``, so applying it costs ``n (a + b)`` instead of ``n²`` and inverting it means inverting two
small matrices), by minimizing the quantized layer's output error on calibration activations with a
straight-through estimator for the rounding. The reference also learns per-channel scales and clipping
thresholds and trains a whole block's output at once; this module keeps the core: one linear, ``P₁ ⊗ P₂``
started at the Hadamard factors (so it can only improve on QuaRot's choice on the calibration tokens),
symmetric per-row INT weights and per-token INT activations, Adam.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .hadamard import apply_hadamard, hadamard_factors

__all__ = ["FlatQuantFit", "ste_fake_quant_rows", "transformed_output", "fit_kronecker_transform"]


def ste_fake_quant_rows(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Symmetric fake quantization with one absmax scale per row (last dim); rounding passes gradients (STE)."""
    qmax = 2 ** (n_bits - 1) - 1
    s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    v = x / s
    v = v + (torch.round(v).clamp(-qmax, qmax) - v).detach()
    return v * s


def transformed_output(x: torch.Tensor, weight: torch.Tensor, factors: list[torch.Tensor] | None,
                       w_bits: int, a_bits: int) -> torch.Tensor:
    """``Q_a(x P) Q_w(W P⁻ᵀ)ᵀ`` with ``P = ⊗ factors`` (``None``: no transform); differentiable in the factors."""
    if factors is None:
        return ste_fake_quant_rows(x, a_bits) @ ste_fake_quant_rows(weight, w_bits).T
    inv_t = [torch.linalg.inv(f).T for f in factors]
    return ste_fake_quant_rows(apply_hadamard(x, factors), a_bits) @ \
        ste_fake_quant_rows(apply_hadamard(weight, inv_t), w_bits).T


@dataclass
class FlatQuantFit:
    factors: list[torch.Tensor]  # the learned P₁, P₂, … (float32)
    losses: list[float]  # calibration loss per step (relative output error², mean over tokens)


def _rel_err2(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((y_hat - y) ** 2).sum() / (y**2).sum()


def fit_kronecker_transform(x: torch.Tensor, weight: torch.Tensor, w_bits: int = 4, a_bits: int = 4,
                            steps: int = 100, lr: float = 1e-3, seed: int = 0,
                            dtype: torch.dtype = torch.float64) -> FlatQuantFit:
    """Learn ``P = P₁ ⊗ P₂`` (started at the Hadamard factors of the input width) for one linear layer.

    ``x``: calibration inputs (tokens, in_features); ``weight``: (out_features, in_features). Minimizes
    ``‖Q_a(xP) Q_w(WP⁻ᵀ)ᵀ − xWᵀ‖² / ‖xWᵀ‖²`` with Adam; returns float32 factors. The fit runs in ``dtype``:
    float64 by default, because the rounding inside the loss makes the trajectory chaotic — in float32 the
    last-bit differences between thread counts flip a rounding and end a few per cent apart.
    """
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)}: expected (tokens, K) and (N, K)")
    for name, v, lo in (("w_bits", w_bits, 2), ("a_bits", a_bits, 2), ("steps", steps, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name}={v!r}: must be an integer ≥ {lo}")
    if not lr > 0:
        raise ValueError(f"lr={lr!r}: must be positive")
    if not (torch.isfinite(x).all() and torch.isfinite(weight).all()):
        raise ValueError("x or weight contains NaN or Inf")
    torch.manual_seed(seed)
    x, weight = x.detach().to(dtype), weight.detach().to(dtype)
    y = x @ weight.T
    factors = [f.to(dtype).clone().requires_grad_(True) for f in hadamard_factors(x.shape[1])]
    opt = torch.optim.Adam(factors, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _rel_err2(transformed_output(x, weight, factors, w_bits, a_bits), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return FlatQuantFit([f.detach().float() for f in factors], losses)
