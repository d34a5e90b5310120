"""Pick the W4A16 launch parameters on this GPU, then run bench_w4a16 with them.

    python benchmarks/tune_w4a16.py --out benchmarks/results/w4a16_<gpu>.json

A small grid per path (GEMV at M = 1, GEMM at M = 16, 64, 256) on two large
shapes; the parameters with the lowest total time win and are written into the
results JSON by bench_w4a16 ("launch").
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
import bench_w4a16  # noqa: E402
from qtutor.kernels import w4a16  # noqa: E402

SHAPES = [(8192, 28672), (4096, 4096), (14336, 4096)]


def total_time(M: int, path: str, params: dict) -> float:
    t = 0.0
    for K, N in SHAPES:
        w = bench_w4a16.random_w4(K, N)
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        kw = {"gemv": params} if path == "gemv" else {"gemm": params}
        t += do_bench(lambda: w4a16.w4a16_matmul(x, **w, group_size=bench_w4a16.GROUP, **kw),
                      warmup=10, rep=40, return_mode="median")
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w)
            for n, k, p, w in itertools.product([64, 128, 256], [64, 128], [264, 528, 1056], [4, 8])]
    best = min(grid, key=lambda p: total_time(1, "gemv", p))
    print("GEMV", best, flush=True)
    w4a16.GEMV.update(best)
    grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w)
            for n, k, p, w in itertools.product([64, 128], [64, 128], [132, 264, 528], [4, 8])]
    best = min(grid, key=lambda p: sum(total_time(M, "gemm", p) for M in (16, 64, 256)))
    print("GEMM", best, flush=True)
    w4a16.GEMM.update(best)
    sys.argv = [sys.argv[0], "--out", args.out]
    bench_w4a16.main()


if __name__ == "__main__":
    main()
