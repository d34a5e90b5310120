"""W4A16 (4-bit GPTQ-layout weights, fp16 activations) side by side with cuBLAS fp16 and torch's int4 kernel.

    python benchmarks/bench_w4a16.py --out benchmarks/results/w4a16_<gpu>.json

One process, one GPU, the same random weights for every peer: cuBLAS fp16
(``x @ W.T``), torch's tinygemm int4 kernel (``torch.ops.aten._weight_int4pack_mm``,
bf16, groups of 128) and ``qtutor.kernels.w4a16`` (groups of 128). Four copies of each
weight rotate so that L2 does not hold the weight between calls. Times are medians
of ``triton.testing.do_bench_cudagraph`` (the calls replayed from a CUDA graph, so
Python launch overhead — tens of µs for a Triton launcher — is not counted for anyone); "fraction_of_copy_bw" is the bytes a kernel must move
(weights + scales + zeros + activations + output) over the measured copy bandwidth.
The end-to-end part times one decode step (M = 1) through the seven projections of
32 Llama-3-8B-shaped blocks, captured in a CUDA graph, fp16 vs W4A16.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).parent))
from bench_w8a8 import copy_bandwidth  # noqa: E402  (the same 1 GiB copy measurement)
from qtutor.kernels import w4a16  # noqa: E402
from qtutor.kernels.w4a16 import w4a16_matmul, w4a16_ref  # noqa: E402

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672), (4096, 14336), (14336, 4096)]  # (K, N)
MS = [1, 4, 16, 64, 256]
GROUP = 128
BLOCK_8B = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)]


def random_w4(K: int, N: int) -> dict:
    """Random 4-bit codes in the GPTQ-v2 layout with plausible scales (the values do not change the work)."""
    return {"qweight": torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, device="cuda"),
            "qzeros": torch.randint(-2**31, 2**31 - 1, (K // GROUP, N // 8), dtype=torch.int32, device="cuda"),
            "scales": (torch.rand(K // GROUP, N, device="cuda") * 0.01).half(),
            "g_idx": (torch.arange(K, device="cuda") // GROUP).to(torch.int32)}


def torch_int4(K: int, N: int):
    """torch's tinygemm layout for a random weight: (packed, scales_and_zeros)."""
    q = torch.randint(0, 16, (N, K), dtype=torch.int32, device="cuda")
    packed_u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(packed_u8, 8)
    sz = torch.stack([torch.rand(K // GROUP, N, device="cuda") * 0.01,
                      torch.rand(K // GROUP, N, device="cuda") * 0.01], dim=2).to(torch.bfloat16)
    return packed, sz


def bench_shapes(bw: float) -> list[dict]:
    rows = []
    for K, N in SHAPES:
        ws = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(4)]
        w4 = [random_w4(K, N) for _ in range(4)]
        try:
            ti4 = [torch_int4(K, N) for _ in range(4)]
        except Exception as exc:  # noqa: BLE001 - recorded, not hidden
            ti4, ti4_error = None, repr(exc)
        x0 = torch.randn(16, K, device="cuda", dtype=torch.float16)
        err = float(((w4a16_matmul(x0, **w4[0]).float() - w4a16_ref(x0, **w4[0]).float()).norm()
                     / w4a16_ref(x0, **w4[0]).float().norm()))
        for M in MS:
            xs = [torch.randn(M, K, device="cuda", dtype=torch.float16) for _ in range(4)]
            xb = [x.bfloat16() for x in xs]
            it = {"i": 0}

            def rot():
                it["i"] = (it["i"] + 1) % 4
                return it["i"]

            fns = {"cublas_fp16": lambda: (lambda i: xs[i] @ ws[i].T)(rot()),
                   "qtutor_w4a16": lambda: (lambda i: w4a16_matmul(xs[i], **w4[i], group_size=GROUP))(rot())}
            if ti4 is not None:
                fns["torch_int4_tinygemm"] = lambda: (lambda i: torch.ops.aten._weight_int4pack_mm(
                    xb[i], ti4[i][0], GROUP, ti4[i][1]))(rot())
            # CUDA-graph replay: GPU time without Python launch overhead, for every peer alike
            times = {k: do_bench_cudagraph(f, rep=100, return_mode="median") * 1e3 for k, f in fns.items()}
            w4_bytes = K * N // 2 + (K // GROUP) * N * (2 + 0.5) + 2 * M * K + 2 * M * N
            fp16_bytes = 2 * K * N + 2 * M * K + 2 * M * N
            row = {"K": K, "N": N, "M": M, "time_us": times, "rel_err_vs_ref_M16": err,
                   "speedup_vs_fp16": {k: times["cublas_fp16"] / v for k, v in times.items()},
                   "fraction_of_copy_bw": {k: (fp16_bytes if k == "cublas_fp16" else w4_bytes) / (v * 1e-6) / bw
                                           for k, v in times.items()}}
            if "torch_int4_tinygemm" in times:
                row["qtutor_vs_torch_int4"] = times["torch_int4_tinygemm"] / times["qtutor_w4a16"]
            else:
                row["torch_int4_error"] = ti4_error
            rows.append(row)
            print(f"K={K:>5} N={N:>5} M={M:>3} " + " ".join(f"{k}={v:8.1f}us" for k, v in times.items()), flush=True)
    return rows


def bench_decode() -> dict:
    """One token through 32 blocks' projections (attention math left out), CUDA-graph captured."""
    n_blocks = 32
    fp16 = [[torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for K, N in BLOCK_8B] for _ in range(n_blocks)]
    w4 = [[random_w4(K, N) for K, N in BLOCK_8B] for _ in range(n_blocks)]
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)

    def step(use_w4: bool):
        h = x
        for b in range(n_blocks):
            ws = w4[b] if use_w4 else fp16[b]
            mm = (lambda a, i: w4a16_matmul(a, **ws[i], group_size=GROUP)) if use_w4 else (lambda a, i: a @ ws[i].T)
            q, k, v = mm(h, 0), mm(h, 1), mm(h, 2)
            h = h + mm(q, 3) * 1e-3  # attention is left out: o_proj reads q's shape
            up = torch.nn.functional.silu(mm(h, 4)) * mm(h, 5)
            h = h + mm(up, 6) * 1e-3
        return h

    out = {}
    for name, use_w4 in (("fp16", False), ("w4a16", True)):
        step(use_w4)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(use_w4)
        ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
        out[name] = {"ms_per_token": ms, "tokens_per_s": 1e3 / ms}
    out["speedup"] = out["fp16"]["ms_per_token"] / out["w4a16"]["ms_per_token"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    rows = bench_shapes(bw)
    decode = bench_decode()
    print(json.dumps(decode, indent=1), flush=True)
    result = {
        "benchmark": "w4a16",
        "command": f"python benchmarks/bench_w4a16.py --out {args.out}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "copy_bandwidth_TBps": bw / 1e12,
        "group_size": GROUP,
        "timing": "triton.testing.do_bench_cudagraph, median, µs per call",
        "launch": {"gemv": dict(w4a16.GEMV), "gemm": dict(w4a16.GEMM)},
        "not_run": "bitsandbytes (no CUDA build of it on the benchmark machine)",
        "shapes": rows,
        "decode_8b_shaped": decode,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
