"""Where the NF4 dequantize kernel, compiled on a GPU, differs from bitsandbytes' ``dequantize_4bit`` (CPU).

    python benchmarks/debug_nf4_dequant_gpu.py

Prints each differing element: both values, the float32 product level·absmax (torch, CPU and GPU) and its bits.
"""
import itertools

import bitsandbytes.functional as bnbf
import torch

from qtutor.kernels.nf4 import nf4_dequantize

for (N, K), qt, dt, nested in itertools.product([(72, 200), (64, 576), (1, 8), (256, 4096)], ["nf4", "fp4"],
                                                [torch.float16, torch.bfloat16, torch.float32], [True, False]):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0)).to(dt)
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type=qt)
    want = bnbf.dequantize_4bit(packed, qs)
    dq = dict(absmax_code=qs.state2.code.cuda(), absmax2=qs.state2.absmax.cuda(), offset=qs.offset.cuda(),
              dq_blocksize=qs.state2.blocksize) if nested else {}
    got = nf4_dequantize(packed.cuda(), qs.absmax.cuda(), qs.code.float().cuda(), (N, K), 64, dtype=dt, **dq).cpu()
    bad = (got != want).nonzero()
    print(f"{N}x{K} {qt} {dt} nested={nested}: {len(bad)} of {got.numel()} differ", flush=True)
    if len(bad) and not nested:
        flat = packed.reshape(-1)
        codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1).long()
        for n, k in bad[:5].tolist():
            i = n * K + k
            lvl, am = qs.code.float()[codes[i]], qs.absmax.float()[i // 64]
            p_cpu = lvl * am
            p_gpu = (lvl.cuda() * am.cuda()).cpu()
            print(f"  [{n},{k}] got {got[n, k].item()!r} want {want[n, k].item()!r} level {lvl.item()!r} absmax "
                  f"{am.item()!r} product cpu {p_cpu.item()!r} ({p_cpu.view(torch.int32).item():#010x}) gpu "
                  f"{p_gpu.item()!r} -> {p_cpu.to(dt).item()!r} / {p_gpu.to(dt).item()!r} (gpu cast "
                  f"{p_gpu.cuda().to(dt).cpu().item()!r})")
