"""Launcher helpers shared by the kernels: input checks, split-K sizing, launch parameters by M."""
from __future__ import annotations

import triton


def check(cond: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``cond``: bad input is reported before any kernel runs."""
    if not cond:
        raise ValueError(msg)


def split_k(K: int, block_k: int, tiles: int, target_programs: int) -> tuple[int, int]:
    """(K per program, number of K-slices) so that about ``target_programs`` programs run.

    A matrix-vector product with few output tiles cannot fill the GPU's 132
    multiprocessors; splitting K over programs (whose sums are added atomically)
    puts enough loads in flight to reach the memory bandwidth.
    """
    split = max(1, min(triton.cdiv(K, block_k), triton.cdiv(target_programs, tiles)))
    k_per = triton.cdiv(triton.cdiv(K, split), block_k) * block_k
    return k_per, triton.cdiv(K, k_per)


def pick(buckets: list[dict], M: int, override: dict | None = None) -> dict:
    """The launch parameters of the first bucket whose ``max_m`` (None: any) holds M, updated by ``override``."""
    p = next(b for b in buckets if b["max_m"] is None or M <= b["max_m"])
    return {**p, **(override or {})}
