"""One launch each of the int8 and int4 decode kernels at batch 8, context 128k, for Nsight Compute to profile.

    ncu --clock-control none --kernel-name regex:_kv_decode_split_kernel --section SpeedOfLight \
        --section Occupancy --section WarpStateStats --section LaunchStats python benchmarks/kv_decode_profile.py

Same shapes and layout as benchmarks/kv_decode.py (8B-shaped heads, KIVI g32, fp16 residual of 128 tokens).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kv_decode import GROUP_K, GROUP_V, HKV, HQ, RESIDUAL, D  # noqa: E402

from qtutor.kernels import kv_decode as kd  # noqa: E402


def main(B: int = 8, ctx: int = 131072) -> None:
    T, R = ctx - RESIDUAL, RESIDUAL
    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16, generator=gen)
    q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16, generator=gen)
    res = torch.randn(B, HKV, R, D, device="cuda", dtype=torch.float16, generator=gen)
    lens = (torch.full((B,), T, dtype=torch.int32, device="cuda"), torch.full((B,), R, dtype=torch.int32, device="cuda"))
    for bits in (8, 4):
        codes = kd.quantize_kv_ref(k, k, bits=bits, group_k=GROUP_K, group_v=GROUP_V)
        kd.kv_decode_attention(q, *codes, res, res, *lens, bits=bits, group_k=GROUP_K, group_v=GROUP_V,
                               max_len=(T, R))
        torch.cuda.synchronize()
        print(f"int{bits}: launched", flush=True)


if __name__ == "__main__":
    main()
