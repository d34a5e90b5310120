"""W8A8 int8 GEMM on the GPU: qtutor's Triton kernels beside cuBLAS fp16 and torch._int_mm, in one process.

    python benchmarks/bench_w8a8.py --out benchmarks/results/w8a8_<gpu>.json

Times are medians of ``triton.testing.do_bench`` (CUDA events), inputs rotated
over 4 buffers so repeated runs do not hit L2 for the small weights.  The
bandwidth fraction divides the minimum bytes (int8 weight + activations +
output) by the time and by a measured device-to-device copy bandwidth.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform

import torch
import triton
from triton.testing import do_bench

from qtutor.kernels.w8a8 import int8_matmul, quantize_per_token, w8a8_dynamic

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672), (4096, 14336), (14336, 4096)]  # (K, N)
MS = [1, 16, 64, 256]


def copy_bandwidth() -> float:
    """Bytes read + written per second of a 1 GiB device-to-device copy."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def check(K: int, N: int) -> float:
    x = torch.randn(64, K, device="cuda", dtype=torch.float16)
    w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02
    q_w, s_w = quantize_per_token(w)
    ref = x.float() @ (q_w.float() * s_w[:, None]).T
    out = w8a8_dynamic(x, q_w, s_w).float()
    return float((out - ref).norm() / ref.norm())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    rows = []
    for K, N in SHAPES:
        err = check(K, N)
        ws = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(4)]
        qws = [quantize_per_token(w) for w in ws]
        for M in MS:
            xs = [torch.randn(M, K, device="cuda", dtype=torch.float16) for _ in range(4)]
            qxs = [quantize_per_token(x) for x in xs]
            it = {"i": 0}

            def rot():
                it["i"] = (it["i"] + 1) % 4
                return it["i"]

            fns = {
                "cublas_fp16": lambda: (lambda i: xs[i] @ ws[i].T)(rot()),
                "qtutor_int8_matmul": lambda: (lambda i: int8_matmul(qxs[i][0], qws[i][0], qxs[i][1], qws[i][1]))(rot()),
                "qtutor_w8a8_dynamic_fused": lambda: (lambda i: w8a8_dynamic(xs[i], qws[i][0], qws[i][1]))(rot()),
            }
            if M > 16:  # torch._int_mm needs M > 16 on CUDA
                fns["torch_int_mm"] = lambda: (lambda i: torch._int_mm(qxs[i][0], qws[i][0].T))(rot())
            times = {k: do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3 for k, f in fns.items()}  # µs
            int8_bytes = N * K + M * K + M * N * 2
            row = {"K": K, "N": N, "M": M, "rel_err_fused_vs_ref": err, "time_us": times,
                   "speedup_vs_fp16": {k: times["cublas_fp16"] / v for k, v in times.items()},
                   "fraction_of_copy_bw": {k: int8_bytes / (v * 1e-6) / bw for k, v in times.items() if k != "cublas_fp16"}}
            row["fraction_of_copy_bw"]["cublas_fp16"] = (2 * N * K + 2 * M * K + 2 * M * N) / (times["cublas_fp16"] * 1e-6) / bw
            rows.append(row)
            print(f"K={K:>5} N={N:>5} M={M:>3} " + " ".join(f"{k}={v:8.1f}us" for k, v in times.items()), flush=True)
    result = {
        "benchmark": "w8a8",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_w8a8.py --out " + args.out,
        "device": torch.cuda.get_device_name(0),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "copy_bandwidth_GBps": bw / 1e9,
        "note": "times in microseconds, medians of do_bench; fp16 activations; weights int8 per output channel",
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
