"""Helpers shared by the kernels: input checks, split-K sizing and epilogue, launch parameters by M."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


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


def tile_grid(M: int, N: int, K: int, p: dict, block_k: int) -> tuple[int, int, tuple, int, int]:
    """``(BLOCK_M, tiles, grid, k_per_program, split)`` of a split-K tiled product with launch parameters ``p``.

    BLOCK_M is the smallest power of two ≥ 16 that holds M, at most ``p["max_block_m"]``.
    """
    BLOCK_M = min(max(16, triton.next_power_of_2(M)), p["max_block_m"])
    grid_m, grid_n = triton.cdiv(M, BLOCK_M), triton.cdiv(N, p["block_n"])
    k_per, split = split_k(K, block_k, grid_m * grid_n, p["target_programs"])
    return BLOCK_M, grid_m * grid_n, (grid_m, grid_n, split), k_per, split


def interpreting() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``), as the CPU tests do."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_in_fp32(x: torch.Tensor) -> bool:
    """True in Triton's interpreter for bf16 inputs: its bf16 × bf16 ``tl.dot`` is wrong (triton 3.8), so
    kernels multiply bf16 tiles as fp32 there (bf16 values are exact in fp32)."""
    return interpreting() and x.dtype == torch.bfloat16


def pick(buckets: list[dict], M: int, override: dict | None = None) -> dict:
    """The launch parameters of the first bucket whose ``max_m`` (None: any) holds M, updated by ``override``."""
    p = next(b for b in buckets if b["max_m"] is None or M <= b["max_m"])
    return {**p, **(override or {})}


# ----------------------------------------------------------- split-K epilogue
#
# Splitting K over programs needs their partial sums added. The plain way: add them
# atomically into a zeroed fp32 buffer and cast it afterwards — two more launches per
# call (a memset and a cast). The one-launch way: each tile counts its finished
# slices; the program that finishes last reads the sum back (an atomic add of 0) and
# zeroes it, casts, stores and resets the count, so the shared workspace is zero again
# for the next call. (Single stream: calls on concurrent streams would share it.)

_WORKSPACES: dict = {}
# The one-launch epilogue is the default off: timed against three launches on the same calls on an H100
# (`bench_kernels.py --ab-split-k`, results/kernels_h100.json "ab_split_k"), it was ~2 µs slower on the
# mid-sized M = 1 layers under CUDA graphs and even in total. It saves two launches where those cost CPU time.
ONE_LAUNCH_SPLIT_K = False


def split_k_workspace(device, n_values: int, n_tiles: int):
    """A zeroed fp32 workspace of at least ``n_values`` and int32 tile counters, kept per device."""
    ws, cnt = _WORKSPACES.get(device, (None, None))
    if ws is None or ws.numel() < n_values or cnt.numel() < n_tiles:
        n_values = max(n_values, 0 if ws is None else ws.numel())
        n_tiles = max(n_tiles, 0 if cnt is None else cnt.numel())
        ws = torch.zeros(n_values, dtype=torch.float32, device=device)
        cnt = torch.zeros(n_tiles, dtype=torch.int32, device=device)
        _WORKSPACES[device] = (ws, cnt)
    return ws, cnt


def split_k_buffers(x: torch.Tensor, M: int, N: int, tiles: int, split: int):
    """``(out, ws, cnt, one_launch)`` for a launch whose tiles are split ``split`` ways over K."""
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if split == 1:
        return out, out, out, 1
    if ONE_LAUNCH_SPLIT_K:
        ws, cnt = split_k_workspace(x.device, M * N, tiles)
        return out, ws, cnt, 1
    ws = torch.zeros(M, N, device=x.device, dtype=torch.float32)
    return out, ws, split_k_workspace(x.device, 1, 1)[1], 0  # counters unused; int32 like the one-launch call


def split_k_result(out: torch.Tensor, ws: torch.Tensor, one_launch: int) -> torch.Tensor:
    return out if one_launch else ws.to(out.dtype)


@triton.jit
def store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_om, tile, SPLIT, ONE_LAUNCH):
    """Store a program's (BM, BN) fp32 sum ``acc`` into ``out`` (cast to its type).

    ``SPLIT`` programs share the tile: add into the workspace; with ``ONE_LAUNCH``
    the last to arrive stores the total and leaves workspace and counter at zero,
    otherwise the launcher casts the workspace afterwards.
    """
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if SPLIT == 1:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        wptrs = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(wptrs, acc, mask=mask)
        if ONE_LAUNCH:
            tl.debug_barrier()  # every thread's add is issued before the tile's count moves
            ticket = tl.atomic_add(cnt_ptr + tile, 1)
            if ticket == SPLIT - 1:
                # read the sum where the atomics left it (L2: adding 0 returns it), then clear it
                total = tl.atomic_add(wptrs, tl.zeros_like(acc), mask=mask)
                tl.store(wptrs, tl.zeros_like(acc), mask=mask)
                total = tl.where(mask, total, 0.0)  # masked lanes of an atomic return nothing defined
                tl.store(ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
                tl.atomic_xchg(cnt_ptr + tile, 0)
