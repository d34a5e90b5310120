"""Exact int8 × int8 → int32 matrix products that are fast on every CPU.

``torch._int_mm`` is exact, but on a CPU without int8 dot-product instructions
(no AVX-512 VNNI / AVX-VNNI / AMX: many AMD and older Intel CPUs) it falls back
to a slow loop — measured 10–50× slower than a float32 matmul of the same
shape. Float arithmetic gives the *same* integers when no partial sum can
round:

* **float32 in K-chunks**: every product of two int8 codes is at most
  128² = 2¹⁴ in magnitude, so any partial sum over a chunk of at most 1024
  columns is an integer of magnitude ≤ 2²⁴ — exactly representable in float32
  whatever order the BLAS adds in. Each chunk's result is converted to int32
  and the chunks are added in int32, as ``_int_mm`` accumulates.
* **float64**: exact while K · 128² < 2⁵³ (K below 5 · 10¹¹).

Which of the three is fastest depends on the CPU, so :func:`int8_mm` measures
once per process (a few milliseconds) instead of guessing from CPU flags, and
checks on the same probe that every path really is exact: a BLAS set to lower
its fp32 precision, or an int8 kernel that saturates 16-bit partial sums, fails
that check and is never used.
``QTUTOR_INT8_MM=int_mm|float32|float64`` forces one path.
"""
from __future__ import annotations

import os
import time

import torch

__all__ = ["int8_mm", "int8_mm_backend", "INT8_MM_BACKENDS", "F32_EXACT_K"]

F32_EXACT_K = 1024  # 1024 · 128² = 2²⁴: the widest K-chunk whose float32 partial sums stay exact
INT8_MM_BACKENDS = ("int_mm", "float32", "float64")
_chosen: dict[str, str] = {}


def _mm_int_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    return torch._int_mm(a, b_t)


def _mm_float32(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    K = a.shape[1]
    out = None
    for k0 in range(0, K, F32_EXACT_K):
        part = (a[:, k0:k0 + F32_EXACT_K].float() @ b_t[k0:k0 + F32_EXACT_K].float()).to(torch.int32)  # (M, N)
        out = part if out is None else out.add_(part)
    if out is None:  # K == 0
        out = torch.zeros(a.shape[0], b_t.shape[1], dtype=torch.int32, device=a.device)
    return out


def _mm_float64(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    return (a.double() @ b_t.double()).to(torch.int32)


_IMPLS = {"int_mm": _mm_int_mm, "float32": _mm_float32, "float64": _mm_float64}


def _probe() -> str:
    """Time the three paths on a layer-sized product; keep the fastest one that is exact."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (128, 1536), generator=gen, dtype=torch.int8)  # (M, K)
    b_t = torch.randint(-128, 128, (1536, 576), generator=gen, dtype=torch.int8)  # (K, N)
    # the largest products, all of one sign: int8 kernels that add pairs of products in saturating
    # 16-bit lanes (x86 vpmaddubsw after an s8 -> u8 shift) get these wrong, and are never chosen
    a[0], b_t[:, 0] = -128, -128
    a[1], b_t[:, 1] = 127, 127
    a[2], b_t[:, 2] = 127, -128
    want = _mm_float64(a, b_t)
    best, best_t = "float64", float("inf")
    for name, fn in _IMPLS.items():
        if not torch.equal(fn(a, b_t), want):
            continue
        t0 = time.perf_counter()
        for _ in range(2):
            fn(a, b_t)
        dt = time.perf_counter() - t0
        if dt < best_t:
            best, best_t = name, dt
    return best


def int8_mm_backend(device: torch.device | str = "cpu") -> str:
    """The path :func:`int8_mm` takes on ``device``: ``"int_mm"``, ``"float32"`` or ``"float64"``."""
    forced = os.environ.get("QTUTOR_INT8_MM")
    if forced:
        if forced not in INT8_MM_BACKENDS:
            raise ValueError(f"QTUTOR_INT8_MM={forced!r}: allowed values are {', '.join(INT8_MM_BACKENDS)}")
        return forced
    kind = torch.device(device).type
    if kind == "cuda":
        return "int_mm"
    if kind not in _chosen:
        _chosen[kind] = _probe()
    return _chosen[kind]


def int8_mm(a: torch.Tensor, b_t: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``a`` (M, K) int8 times ``b_t`` (K, N) int8, exact, as (M, N) int32 — ``torch._int_mm``'s result.

    ``backend`` forces a path (see the module docstring); ``None`` uses the one measured fastest here.
    """
    for name, t in (("a", a), ("b_t", b_t)):
        if t.dtype != torch.int8 or t.ndim != 2:
            raise ValueError(f"{name} must be a 2-D int8 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    if a.shape[1] != b_t.shape[0]:
        raise ValueError(f"inner sizes differ: a is {tuple(a.shape)}, b_t is {tuple(b_t.shape)}")
    if backend is None:
        backend = int8_mm_backend(a.device)
    elif backend not in INT8_MM_BACKENDS:
        raise ValueError(f"backend={backend!r}: allowed values are {', '.join(INT8_MM_BACKENDS)} or None")
    if backend == "int_mm" and a.is_cuda and (a.shape[0] <= 16 or a.shape[1] % 8 or b_t.shape[1] % 8):
        backend = "float32"  # torch._int_mm on CUDA needs M > 16 and K, N multiples of 8
    return _IMPLS[backend](a, b_t)
