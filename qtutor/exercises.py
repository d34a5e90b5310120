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

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402,F811

__all__ += ["int8_decomposed_matmul", "gptq_column_step", "awq_search", "nf4_quantize_block", "q8_0_encode",
            "pack_k4", "dequant_gemv", "kernel_stub_errors"]


def int8_decomposed_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float) -> torch.Tensor:
    """Exercise 6.1: LLM.int8() of fp16 ``x`` (T, K) and ``w`` (N, K) -> fp16 (T, N), as bitsandbytes computes it."""
    from .methods.llm_int8 import llm_int8_matmul, vectorwise_quant

    CB, SCB, _ = vectorwise_quant(w)  # (N, K) int8 codes, (N,) row absmax
    return llm_int8_matmul(x, CB, SCB, threshold, use_triton=False)


def gptq_column_step(W1: torch.Tensor, Hinv1: torch.Tensor, i: int, scale: torch.Tensor, zero: torch.Tensor,
                     maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 7.1: quantize column ``i`` of ``W1`` (rows, block) and move ``W1[:, i:]`` in place; ``(q, err)``.

    The inner step of :meth:`qtutor.methods.gptq.GPTQ.quantize` (Frantar et al., 2023, Algorithm 1).
    """
    from .methods.gptq import gptq_fake_quant

    w = W1[:, i]
    q = gptq_fake_quant(w, scale, zero, int(maxq).bit_length())  # (rows,) on the grid
    err = (w - q) / Hinv1[i, i]
    W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
    return q, err


def awq_search(linear: torch.nn.Linear, x: torch.Tensor, n_bits: int, group_size: int,
               n_grid: int) -> tuple[float, torch.Tensor]:
    """Exercise 8.1: AWQ's grid search over α for one linear judged on its own output; ``(best α, scales (in,))``."""
    from .methods.awq import search_scales

    scales, ratio, _ = search_scales(linear, [linear], x, n_bits, group_size, n_grid)
    return ratio, scales


def nf4_quantize_block(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Exercise 9.1: index (0-15) of the nearest of ``levels`` for each value of the block ``x`` / absmax."""
    from .methods.nf4 import _blockwise_codes

    flat = x.reshape(-1).float()
    codes, _ = _blockwise_codes(flat, levels, flat.numel())  # one block: the whole of x
    return codes[: flat.numel()].long()


def q8_0_encode(x: np.ndarray) -> np.ndarray:
    """Exercise 10.1: ``x`` (n_blocks, 32) float32 -> (n_blocks, 34) uint8 Q8_0 blocks, as llama.cpp writes them."""
    from .gguf import quantize_blocks

    return quantize_blocks(x, "Q8_0")


def pack_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Exercise 10.2: eight 6-bit scales and mins per super-block (n, 8) -> (n, 12) bytes (``get_scale_min_k4``)."""
    from .gguf import pack_scales_k4

    return pack_scales_k4(ls, lm)


def dequant_gemv(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group_size: int, block_n: int = 32) -> torch.Tensor:
    """Exercise 11.1: ``y = W x`` for a 4-bit GPTQ-v2 weight; float32 (N,). In PyTorch (``block_n`` is unused).

    ``qweight`` (K/8, N) and ``qzeros`` (K/group_size, N/8) int32, ``scales`` (K/group_size, N) float32.
    """
    from .formats.layouts import unpack_gptq
    from .primitives.grid import QuantizedWeight

    g_idx = torch.arange(x.shape[0], dtype=torch.int32) // group_size  # (K,)
    codes = unpack_gptq({"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx},
                        n_bits=4, group_size=group_size, version=2)
    # the float32 scales as given (a checkpoint stores fp16, which unpack_gptq assumes)
    qw = QuantizedWeight(codes.q, scales.float().T.contiguous(), codes.zero, g_idx, 4, group_size)
    return qw.dequantize() @ x.float()  # (N, K) @ (K,)


@contextlib.contextmanager
def kernel_stub_errors() -> Iterator[None]:
    """Let a stub ``raise NotImplementedError`` inside a ``@triton.jit`` function reach :func:`~qtutor.course.exercise`.

    Triton wraps it: the interpreter in an ``InterpreterError``, the compiler in a
    ``CompilationError`` that quotes the offending line. Either is re-raised as the
    ``NotImplementedError`` it stands for; every other error passes unchanged.
    """
    try:
        yield
    except NotImplementedError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("triton") and "NotImplementedError" in str(exc):
            raise NotImplementedError(f"a Triton function is still a stub ({type(exc).__name__})") from exc
        raise


# --- notebook 12 ---

__all__ += ["scheme_bits"]


def scheme_bits(out_features: int, in_features: int, n_bits: int, group_size: int | None) -> int:
    """Exercise 12.1: exact storage in bits of an (out, in) weight in one scheme.

    ``n_bits`` per weight, and per group of ``group_size`` inputs (a short last group included; ``None``: one
    group per row) an fp16 scale and an ``n_bits`` zero-point.
    """
    from .diagnose.allocate import Scheme

    return Scheme(n_bits, group_size).bits(out_features, in_features)


# --- notebook 13 ---

__all__ += ["imatrix_from_activations"]


def imatrix_from_activations(x: torch.Tensor) -> torch.Tensor:
    """Exercise 13.1: activations entering one matmul (n_tokens, in_features) -> importances (in_features,).

    llama.cpp's ``imatrix``: per input column, the mean over tokens of x² (``in_sum2 / counts``).
    """
    x = x.double()
    return (x * x).sum(dim=0) / x.shape[0]


# --- notebook 14 ---

__all__ += ["bisection_step"]


def bisection_step(layers: list, evaluate, threshold: float) -> list:
    """Exercise 14.1: the half of ``layers`` (known to hold one culprit) to recurse into.

    Test only the first half ``layers[:n // 2]``: above ``threshold`` the culprit is there, else in the second.
    """
    from .diagnose.bisect import choose_half

    return choose_half(layers, evaluate, threshold)


# --- notebook 15 ---

__all__ += ["fake_quant_keys"]


def fake_quant_keys(k: torch.Tensor, n_bits: int, group_size: int) -> torch.Tensor:
    """Exercise 15.1: KIVI's key quantization, dequantized — per channel, over groups of ``group_size`` tokens.

    ``k`` is (batch, heads, tokens, head_dim) with tokens a multiple of ``group_size``; asymmetric min/max codes
    0 … 2**n_bits - 1 in float32 (no float16 rounding of the scale, unlike the cache's stored form).
    """
    B, H, T, D = k.shape
    g = k.float().reshape(B, H, T // group_size, group_size, D)
    lo, hi = g.amin(3, keepdim=True), g.amax(3, keepdim=True)
    qmax = 2**n_bits - 1
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((g - lo) / scale), 0, qmax)
    return (q * scale + lo).reshape(B, H, T, D)


# --- notebook 16 ---

__all__ += ["round_to_e4m3"]


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Exercise 16.1: the nearest FP8 E4M3 value of each element (ties to even), saturating at ±448, as float32.

    The grid step in the binade ``[2^e, 2^(e+1))`` is ``2^(e-3)`` (3 mantissa bits); below the smallest normal
    ``2^-6`` the step stays ``2^-9`` (subnormals). ``torch.round`` rounds halves to even, as the cast does.
    """
    x = x.float()
    e = torch.floor(torch.log2(x.abs().clamp(min=2.0**-6)))  # the binade; subnormals share the lowest
    step = torch.exp2(e - 3)
    return (torch.round(x / step) * step).clamp(-448.0, 448.0)


# --- notebook 17 ---

__all__ += ["fake_quant_clipped_ste"]


def fake_quant_clipped_ste(x: torch.Tensor, scale: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Exercise 17.1: symmetric fake quantization whose gradient is the clipped straight-through estimator.

    Forward: ``s · clamp(round(x / s), −q_max, q_max)`` with ``q_max = 2**(n_bits−1) − 1``. Backward: 1 where
    ``|x / s| ≤ q_max``, 0 where the value was clipped. The detach trick: clamp ``x`` to the range (clamp passes
    gradient 1 inside and 0 outside) and add the rounding error as a constant.
    """
    q_max = 2 ** (n_bits - 1) - 1
    x_c = torch.maximum(torch.minimum(x, q_max * scale), -q_max * scale)
    q = torch.clamp(torch.round(x / scale), -q_max, q_max) * scale
    return x_c + (q - x_c).detach()


# --- notebook 18 ---

__all__ += ["capstone_quantize", "capstone_schemes"]

import copy  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

MIXED_PRECISION_MAP = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "mixed_precision_h200.json"


def capstone_schemes(model, max_linear_mb: float) -> dict:
    """``{layer: Scheme}``: the least summed KL (the recorded per-layer map of notebook 12) with the decoder linears'
    codes, scales and zero-points in at most ``max_linear_mb`` megabytes, among the widths qtutor packs (2, 4, 8)."""
    from .diagnose.allocate import ALL_SCHEMES, allocate, damage_from_frame, linear_shapes
    from .nn.w4a16 import PACKED_BITS

    damage = damage_from_frame(pd.DataFrame(json.loads(MIXED_PRECISION_MAP.read_text())["rows"]), "kl")
    shapes = linear_shapes(model)
    n_weights = sum(o * i for o, i in shapes.values())
    schemes = [s for s in ALL_SCHEMES if s.n_bits in PACKED_BITS]
    return allocate(damage, shapes, max_linear_mb * 8e6 / n_weights, schemes).schemes


def capstone_quantize(model, tok, budget):
    """Exercise 18.1: a model that fits ``budget.max_mb`` as stored, as good as a measured allocation makes it.

    Spend the megabytes left after the embeddings and norms on the decoder linears, let the allocator choose a
    scheme per layer from the recorded KL map, convert each group of layers with RTN, then measure the stored size:
    the packed format also stores a ``g_idx`` per input channel and packs zero-points in whole words, which the
    allocator's bit count leaves out, so shrink the linears' share by the overshoot and try again. ``model`` is
    the learner's own copy: it is converted in place on the last try (earlier tries work on copies).
    """
    from .capstone import stored_megabytes
    from .config import RTNConfig
    from .nn import convert

    rest = stored_megabytes(model)["rest"]
    share = budget.max_mb - rest
    for _ in range(6):
        if share <= 0:
            break
        schemes = capstone_schemes(model, share)
        trial = copy.deepcopy(model)
        for scheme in sorted(set(schemes.values()), key=lambda s: (s.n_bits, s.group_size or 0)):
            names = {n for n, s in schemes.items() if s == scheme}
            convert(trial, RTNConfig(n_bits=scheme.n_bits, group_size=scheme.group_size), only=names.__contains__)
        over = stored_megabytes(trial)["total"] - budget.max_mb
        if over <= 0:
            return trial
        share -= over + 0.01
    raise ValueError(f"budget.max_mb={budget.max_mb}: no mix of 2-, 4- and 8-bit RTN layers fits it")
