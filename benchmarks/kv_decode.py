"""One decode step of attention over a long KV cache: qtutor's int8/int4 flash-decoding kernel against fp16 SDPA.

    python benchmarks/kv_decode.py --out benchmarks/results/kv_decode_<gpu>.json

Llama-3-8B-shaped heads (32 query heads, 8 KV heads, head dim 128: grouped-query attention), one new query
token per sequence, batch 1–32, context 4k–128k. Peers, in one process on one GPU:

- ``torch.nn.functional.scaled_dot_product_attention`` on the fp16 cache with ``enable_gqa=True``, forced to its
  flash backend and to its memory-efficient backend (each its own entry; an error is recorded, not hidden);
- qtutor's ``kv_decode_attention`` on the KIVI layout at 8 and 4 bits (keys per channel over groups of 32
  tokens, values per token over groups of 32 channels, fp16 scale and min), the newest 128 tokens of each
  sequence in an fp16 residual window as KIVI keeps them.

Decode attention is memory-bound (≈ 4·D flops per 2·D·bytes-per-element it reads), so the limit is bandwidth:
``bytes`` counts what each method must read (cache, scales, residual, the query) and write; ``fraction_of_copy_bw``
is bytes / time over the measured device-to-device copy bandwidth, and ``limit_speedup`` is fp16's bytes over the
method's — what a kernel at the same fraction as SDPA would gain. Times are medians of
``triton.testing.do_bench_cudagraph`` (qtutor's launcher gets ``max_len`` so it needs no host read inside the
graph). The caches are not rotated: all but the smallest exceed the H200's 50 MB L2 several times over, and
``l2_resident_possible`` marks the rows whose bytes would fit in 60 MiB.

Correctness on the device: each configuration's int8/int4 output is compared with ``kv_decode_ref`` on the same
codes (relative error recorded) for batch ≤ 4, and SDPA on the dequantized cache is compared with the kernel.
``--tune`` also sweeps ``block_t``, the split count and the warps per program at a few shapes.
"""
from __future__ import annotations

import argparse
import itertools
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).parent))
from bench_kernels import copy_bandwidth  # noqa: E402  (the sibling benchmark's 1 GiB copy)

from qtutor.kernels import kv_decode as kd  # noqa: E402

HQ, HKV, D = 32, 8, 128
GROUP_K = GROUP_V = 32
RESIDUAL = 128
BATCHES = [1, 4, 8, 16, 32]
CONTEXTS = [4096, 16384, 32768, 65536, 131072]
L2_BYTES = 60 * 2**20


def time_us(fn) -> float:
    return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def sdpa_entry(q4, k, v, backend) -> dict:
    from torch.nn.attention import sdpa_kernel

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q4, k, v, enable_gqa=True)

    try:
        out = run()
        torch.cuda.synchronize()
        return {"us": time_us(run), "out": out}
    except Exception as exc:  # noqa: BLE001 - a backend that refuses the shape is a result
        return {"error": repr(exc)[:300]}


def bytes_fp16(B, ctx) -> int:
    return 2 * B * HKV * ctx * D * 2 + 2 * B * HQ * D * 2  # K and V, query in and output out


def bytes_quant(B, T, R, bits) -> int:
    codes = 2 * B * HKV * T * D * bits // 8
    scales = 2 * B * HKV * (T // GROUP_K) * D * 2 + 2 * B * HKV * T * (D // GROUP_V) * 2  # scale + min, fp16
    return codes + scales + 2 * B * HKV * R * D * 2 + 2 * B * HQ * D * 2


def run_config(B, ctx, bw, check: bool) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(B * 7919 + ctx)
    T, R = ctx - RESIDUAL, RESIDUAL
    k = torch.randn(B, HKV, ctx, D, device="cuda", dtype=torch.float16, generator=gen)
    v = torch.randn(B, HKV, ctx, D, device="cuda", dtype=torch.float16, generator=gen)
    k[:, :, :, 5] *= 10  # an outlier channel, as real keys have
    q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16, generator=gen)
    rows = []
    base = {"batch": B, "context": ctx, "hq": HQ, "hkv": HKV, "d": D}
    from torch.nn.attention import SDPBackend
    sdpa_best = None
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                          ("sdpa_mem_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        e = sdpa_entry(q.unsqueeze(2), k, v, backend)
        nbytes = bytes_fp16(B, ctx)
        row = {**base, "method": name, "kv_format": "fp16", "bytes": nbytes}
        if "error" in e:
            row["error"] = e["error"]
        else:
            row.update(us=e["us"], fraction_of_copy_bw=nbytes / (e["us"] * 1e-6) / bw)
            sdpa_best = e["us"] if sdpa_best is None else min(sdpa_best, e["us"])
        rows.append(row)
    k_res, v_res = k[:, :, T:].contiguous(), v[:, :, T:].contiguous()
    k_len = torch.full((B,), T, dtype=torch.int32, device="cuda")
    r_len = torch.full((B,), R, dtype=torch.int32, device="cuda")
    for bits in (8, 4):
        kc, ks, kmn, vc, vs, vmn = kd.quantize_kv_ref(k[:, :, :T].contiguous(), v[:, :, :T].contiguous(), bits=bits,
                                                      group_k=GROUP_K, group_v=GROUP_V)
        args = (q, kc, ks, kmn, vc, vs, vmn, k_res, v_res, k_len, r_len)
        meta = dict(bits=bits, group_k=GROUP_K, group_v=GROUP_V)

        def run():
            return kd.kv_decode_attention(*args, **meta, max_len=(T, R))

        out = run()
        torch.cuda.synchronize()
        us = time_us(run)
        nbytes = bytes_quant(B, T, R, bits)
        row = {**base, "method": f"qtutor_int{bits}", "kv_format": f"int{bits} KIVI g{GROUP_K}, fp16 residual {R}",
               "bytes": nbytes, "us": us, "fraction_of_copy_bw": nbytes / (us * 1e-6) / bw,
               "limit_speedup_vs_fp16": bytes_fp16(B, ctx) / nbytes}
        if sdpa_best is not None:
            row["speedup_vs_best_sdpa"] = sdpa_best / us
        if check:
            want = kd.kv_decode_ref(*args, **meta)
            row["rel_err_vs_reference"] = ((out.float() - want.float()).norm() / want.float().norm()).item()
            kq = torch.cat([kd.dequantize_k_ref(kc, ks, kmn, group_k=GROUP_K, bits=bits).half(), k_res], 2)
            vq = torch.cat([kd.dequantize_v_ref(vc, vs, vmn, group_v=GROUP_V, bits=bits).half(), v_res], 2)
            s = F.scaled_dot_product_attention(q.unsqueeze(2), kq, vq, enable_gqa=True).squeeze(2)
            row["rel_err_vs_sdpa_on_dequantized"] = ((out.float() - s.float()).norm() / s.float().norm()).item()
            bf = (q.bfloat16(), kc, ks, kmn, vc, vs, vmn, k_res.bfloat16(), v_res.bfloat16(), k_len, r_len)
            got_bf = kd.kv_decode_attention(*bf, **meta, max_len=(T, R)).float()
            want_bf = kd.kv_decode_ref(*bf, **meta).float()
            row["rel_err_vs_reference_bf16"] = ((got_bf - want_bf).norm() / want_bf.norm()).item()
        rows.append(row)
        del kc, ks, kmn, vc, vs, vmn, args
    for r in rows:
        r["l2_resident_possible"] = r["bytes"] < L2_BYTES
    del k, v, q, k_res, v_res
    torch.cuda.empty_cache()
    return rows


def tune(bw) -> list[dict]:
    out = []
    for B, ctx in ((1, 131072), (8, 32768), (32, 32768)):
        T, R = ctx - RESIDUAL, RESIDUAL
        k = torch.randn(B, HKV, T, D, device="cuda", dtype=torch.float16)
        q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16)
        res = torch.randn(B, HKV, R, D, device="cuda", dtype=torch.float16)
        lens = (torch.full((B,), T, dtype=torch.int32, device="cuda"), torch.full((B,), R, dtype=torch.int32,
                                                                                    device="cuda"))
        for bits in (8, 4):
            kc, ks, kmn, vc, vs, vmn = kd.quantize_kv_ref(k, k, bits=bits, group_k=GROUP_K, group_v=GROUP_V)
            nbytes = bytes_quant(B, T, R, bits)
            for block_t, splits, warps, stages in itertools.product((64, 128), (None,), (4, 8), (2, 3)):
                def run():
                    return kd.kv_decode_attention(q, kc, ks, kmn, vc, vs, vmn, res, res, *lens, bits=bits,
                                                  group_k=GROUP_K, group_v=GROUP_V, block_t=block_t,
                                                  num_splits=splits, max_len=(T, R), num_warps=warps,
                                                  num_stages=stages)
                try:
                    run()
                    us = time_us(run)
                    out.append({"batch": B, "context": ctx, "bits": bits, "block_t": block_t,
                                "num_splits": splits, "num_warps": warps, "num_stages": stages, "us": us,
                                "fraction_of_copy_bw": nbytes / (us * 1e-6) / bw})
                except Exception as exc:  # noqa: BLE001
                    out.append({"batch": B, "context": ctx, "bits": bits, "block_t": block_t,
                                "num_splits": splits, "num_warps": warps, "num_stages": stages,
                                "error": repr(exc)[:200]})
        del k, q, res
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    a = ap.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    batches = [int(x) for x in a.batches.split(",")]
    contexts = [int(x) for x in a.contexts.split(",")]
    for ctx in contexts:
        for B in batches:
            new = run_config(B, ctx, bw, check=B <= 4)
            rows += new
            msg = "  ".join(f"{r['method']}={r.get('us', float('nan')):.1f}us" for r in new)
            print(f"B={B:2d} ctx={ctx:6d}  {msg}", flush=True)
    result = {
        "what": "decode attention, one query token per sequence, Llama-3-8B-shaped heads",
        "command": "python " + " ".join(sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(), "host": platform.node(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "copy_bandwidth_bytes_per_s": bw,
        "settings": {"group_k": GROUP_K, "group_v": GROUP_V, "residual": RESIDUAL, "timing": "do_bench_cudagraph median",
                     "programs_per_sm": kd.PROGRAMS_PER_SM, "min_tiles_per_split": kd.MIN_TILES_PER_SPLIT,
                     "tokens_per_split": kd.TOKENS_PER_SPLIT, "num_warps": kd.NUM_WARPS,
                     "num_stages": kd.NUM_STAGES},
        "rows": rows,
    }
    if a.tune:
        result["tune"] = tune(bw)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
