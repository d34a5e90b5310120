"""Marlin as the W4A16 anchor: built from its published CUDA source, timed beside the peers in one run.

    cd <marlin checkout> && TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace
    python benchmarks/bench_marlin_anchor.py --marlin <marlin checkout> --out $OUT/marlin_anchor_h200.json

Marlin (IST-DASLab/marlin, Frantar et al. 2024) is an FP16 x INT4 tensor-core kernel for symmetric 4-bit
codes in groups of 128, repacked offline into its own layout (``marlin.Layer.pack``). Its source is not part
of qtutor: fetch it, build its extension with nvcc for the GPU at hand, and point ``--marlin`` at it.

On issue #18's two target shapes (K × N = 8192 × 28672 and 28672 × 8192) and M ∈ {1, 16, 64}, in one
process: cuBLAS fp16, torch's int4 kernel (``_weight_int4pack_mm``), qtutor's W4A16 (GPTQ layout, g128) and
Marlin, each under a CUDA graph (``bench_kernels.time_us``), with the fraction of copy bandwidth. One weight per
kernel: each is larger than the H200's 50 MB L2, so repeated calls read it from memory. Marlin's output is
compared with x @ its dequantized weight.

On the H200 of 2026-12-03 (CUDA 13.0 nvcc, driver 580.159.04, torch 2.11.0+cu130) Marlin 2f6d7c1 built in
43 s, but its first call stopped with "CUDA error: an illegal instruction was encountered" (built for sm_90,
and again as sm_80 + PTX; compute-sanitizer reports the same). Without the L2 cache hint on its weight loads
it runs, and that is the recorded build (results/marlin_anchor_h200.json), made before building with:

    sed -i -e '/createpolicy.fractional/d' \
        -e 's/cp.async.cg.shared.global.L2::cache_hint \[%0\], \[%1\], %2, p;/cp.async.cg.shared.global [%0], [%1], %2;/' \
        marlin/marlin_cuda_kernel.cu
"""
from __future__ import annotations

import argparse
import json
import sys
import types

import torch

from qtutor.kernels import w4a16 as k_w4

import bench_kernels as bk

SHAPES = [(8192, 28672), (28672, 8192)]
MS = [1, 16, 64]


def marlin_weight(marlin, K: int, N: int):
    """A Marlin layer of symmetric 4-bit codes in groups of 128 along K (scale = max|w| · 2/15, as Marlin's own
    tests), and the dense fp16 weight (K, N) those codes stand for."""
    w = torch.randn(K, N, dtype=torch.half, device="cuda") * 0.02
    g = w.reshape(K // bk.GROUP, bk.GROUP, N)
    s = g.abs().amax(dim=1) * (2 / 15)  # (K/128, N) fp16
    q = torch.clamp(torch.round(g / s[:, None, :]) + 8, 0, 15)
    dense = ((q - 8) * s[:, None, :]).reshape(K, N).half()
    layer = marlin.Layer(K, N, groupsize=bk.GROUP).cuda()
    layer.pack(types.SimpleNamespace(weight=dense.t()), s.t())  # pack() reads weight (N, K) and scales (N, K/128)
    return layer, dense


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marlin", required=True, help="a Marlin checkout with its extension built in place")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"benchmark": "marlin_anchor",
              "command": f"python benchmarks/bench_marlin_anchor.py --marlin <marlin checkout> --out {args.out}",
              **bk.environment(), "timing": "µs per call: median of triton.testing.do_bench_cudagraph (do_bench where a row's 'timing' says eager)",
              "marlin_source": "IST-DASLab/marlin 2f6d7c1 (v0.1.1), built with TORCH_CUDA_ARCH_LIST=9.0 "
                               "python setup.py build_ext --inplace"}
    sys.path.insert(0, args.marlin)
    try:
        import marlin
    except Exception as exc:  # noqa: BLE001 - recorded, and the peers are still timed
        marlin, result["marlin_error"] = None, repr(exc)[:300]
    bw = bk.copy_bandwidth()
    result["copy_bandwidth_TBps"] = bw / 1e12
    rows = []
    for K, N in SHAPES:
        fp16 = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02
        w4 = bk.gptq_w4(K, N)
        tiny = bk.tinygemm_w4(K, N)
        layer, dense = marlin_weight(marlin, K, N) if marlin else (None, None)
        for M in MS:
            x = torch.randn(M, K, device="cuda", dtype=torch.float16)
            xb = x.bfloat16()
            fns = {"cublas_fp16": lambda: x @ fp16.T,
                   "torch_int4_tinygemm": lambda: torch.ops.aten._weight_int4pack_mm(xb, tiny[0], bk.GROUP, tiny[1]),
                   "qtutor_w4a16": lambda: k_w4.w4a16_matmul(x, **w4, group_size=bk.GROUP)}
            act = 2 * M * K + 2 * M * N
            nbytes = {"cublas_fp16": 2 * N * K + act, "torch_int4_tinygemm": N * K // 2 + (K // bk.GROUP) * N * 4 + act,
                      "qtutor_w4a16": N * K // 2 + (K // bk.GROUP) * N * 2.5 + act}
            row = {"K": K, "N": N, "M": M}
            if layer is not None:
                fns["marlin"] = lambda: layer(x)
                nbytes["marlin"] = N * K // 2 + (K // bk.GROUP) * N * 2 + act
                want = x.float() @ dense.float()
                row["marlin_rel_err"] = float((layer(x).float() - want).abs().max() / want.abs().max())
            row["time_us"], row["timing"] = {}, {}
            for name, fn in fns.items():
                try:
                    row["time_us"][name], row["timing"][name] = bk.time_us(fn)
                except Exception:  # noqa: BLE001 - a kernel a CUDA graph cannot capture is timed eagerly, labelled
                    row["time_us"][name], row["timing"][name] = bk.time_us(fn, graph=False)
            row["fraction_of_copy_bw"] = {n: nbytes[n] / (t * 1e-6) / bw for n, t in row["time_us"].items()}
            row["speedup_vs_fp16"] = {n: row["time_us"]["cublas_fp16"] / t for n, t in row["time_us"].items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            result["shapes"] = rows
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        del fp16, w4, tiny, layer, dense
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
