"""qtutor's own answers to the course exercises: what an unfinished exercise falls back to.

A notebook marks each learner function with ``@exercise("N.k", fallback=...)``
(:func:`qtutor.course.exercise`). Where the package already has the function
(``qtutor.primitives.fake_quant``, ``qtutor.methods.awq.search_scales``, …) the
fallback is that function, adapted here to the exercise's signature; the
checkers in :mod:`qtutor.checks` compare the learner's function with the same
package code.
"""
from __future__ import annotations

__all__: list[str] = []

# --- notebooks 00-05 -------------------------------------------------------------------------

import torch  # noqa: E402  (each section imports what it needs: two authors edit this file)

from .primitives import (PerGroup, PerTensor, QuantSpec, ZeroPoint, choose_qparams, fake_quant,  # noqa: E402
                         mse, quantize)

__all__ += ["model_memory_gb", "quantize_asym", "group_fake_quant", "best_clip_ratio", "outlier_dims", "smooth_scales"]


def model_memory_gb(n_params: float, bits_per_weight: float) -> float:
    """Exercise 0.1: weight memory in GB (10**9 bytes) of ``n_params`` weights of ``bits_per_weight`` bits."""
    return n_params * bits_per_weight / 8 / 1e9


def quantize_asym(x: torch.Tensor, n_bits: int) -> tuple[torch.Tensor, float, int]:
    """Exercise 1.1: per-tensor asymmetric codes ``q`` (0 … 2**n_bits - 1), ``scale`` and integer ``zero_point``."""
    spec = QuantSpec(n_bits=n_bits, symmetric=False, zero_point=ZeroPoint.INTEGER, granularity=PerTensor())
    qp = choose_qparams(x, spec)
    return quantize(x, qp, spec), float(qp.scale), int(qp.zero_point)


def group_fake_quant(w: torch.Tensor, n_bits: int, group_size: int) -> torch.Tensor:
    """Exercise 2.1: symmetric fake quantization of ``w`` (rows, in) with one scale per ``group_size`` inputs of a row."""
    return fake_quant(w, QuantSpec(n_bits=n_bits, granularity=PerGroup(group_size)))


def best_clip_ratio(x: torch.Tensor, n_bits: int, ratios: list) -> float:
    """Exercise 3.1: the ratio in ``ratios`` whose symmetric per-tensor clipping gives the least MSE (first on ties)."""
    errors = {r: mse(x, fake_quant(x, QuantSpec(n_bits=n_bits, clip_ratio=r))) for r in ratios}
    return min(errors, key=errors.get)


def outlier_dims(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Exercise 4.1: sorted hidden dims of ``x`` (..., hidden) where any token has ``|x| >= threshold``."""
    from .methods.llm_int8 import outlier_columns

    return outlier_columns(x.reshape(-1, x.shape[-1]), threshold)  # (tokens, hidden)


def smooth_scales(act_absmax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exercise 5.1: SmoothQuant's ``s`` (K,) for one weight ``w`` (N, K) and activation maxima (K,), eq. 4."""
    from .methods.smoothquant import smoothing_scales

    return smoothing_scales(act_absmax, [w], alpha)


# --- notebooks 06-11 -------------------------------------------------------------------------
