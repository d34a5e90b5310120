"""One call of each M = 1 kernel on the largest Llama-3-8B shape, for Nsight Compute.

    ncu -k regex:gemv --section SpeedOfLight --section WarpStateStats python benchmarks/profile_kernels.py
    ncu -k regex:"gemm|dequant" ... python benchmarks/profile_kernels.py --m 16 64

The launches are what ``bench_kernels.py`` times; under ncu they show where the
time goes (memory throughput against the compute pipes and the warps' stalls).
``--m`` profiles other batch sizes instead: W4A16's ``tl.dot`` GEMM and NF4's
dequantize kernel (+ cuBLAS) at M > 1.
"""
import argparse

import torch

from qtutor.kernels import llm_int8 as k_int8
from qtutor.kernels import nf4 as k_nf4
from qtutor.kernels import w4a16 as k_w4

import bench_kernels as bk

parser = argparse.ArgumentParser()
parser.add_argument("--m", type=int, nargs="+", default=[1], help="batch sizes (default: 1)")
args = parser.parse_args()
K, N = 8192, 28672
W = bk.Weights(K, N, {"w4", "nf4", "int8"})
for M in args.m:
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    for _ in range(2):
        k_w4.w4a16_matmul(x, **W.w4[0], group_size=bk.GROUP)
        if bk.bnb:
            k_nf4.nf4_matmul(x, **bk.nf4_kernel_args(*W.nf4[0]))
        if M == 1:
            k_int8.llm_int8_matmul(x, *W.cb[0], 6.0)
torch.cuda.synchronize()
