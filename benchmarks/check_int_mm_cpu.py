"""Is ``torch._int_mm`` exact and fast on this CPU?  Prints one JSON object.

The course's CPU path for int8 products (``qtutor.primitives.int8_mm``) chooses
between ``torch._int_mm``, chunked float32 and float64 by measuring; this
script shows, for the machine it runs on, the CPU flags that matter
(AVX-512 VNNI, AVX-VNNI, AMX), whether ``_int_mm`` equals the exact float64
product on random and extreme int8 inputs, and the time of each path on the
SmolLM2 layer shapes (512 tokens).

    python benchmarks/check_int_mm_cpu.py [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def cpu_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "?")
    flags = set(next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), []))
    return {"model": model, **{f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}}


def cases(M: int, K: int, N: int):
    gen = torch.Generator().manual_seed(0)
    yield "random", torch.randint(-128, 128, (M, K), generator=gen, dtype=torch.int8), \
        torch.randint(-128, 128, (K, N), generator=gen, dtype=torch.int8)
    yield "all +127", torch.full((M, K), 127, dtype=torch.int8), torch.full((K, N), 127, dtype=torch.int8)
    yield "all -128", torch.full((M, K), -128, dtype=torch.int8), torch.full((K, N), -128, dtype=torch.int8)
    yield "+127 x -128", torch.full((M, K), 127, dtype=torch.int8), torch.full((K, N), -128, dtype=torch.int8)
    g = torch.randn(M, K, generator=gen)
    g[:, 7] *= 40  # one outlier channel, as real activations have
    qa = torch.round(g * 127 / g.abs().amax(1, keepdim=True)).to(torch.int8)
    w = torch.randn(N, K, generator=gen)
    qw = torch.round(w * 127 / w.abs().amax(1, keepdim=True)).to(torch.int8)
    yield "per-token codes with an outlier channel", qa, qw.T


def timed(fn, n: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"cpu": cpu_flags(), "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
           "threads": args.threads, "python": platform.python_version(), "shapes": []}
    for M, K, N in [(512, 576, 1536), (512, 1536, 576), (512, 576, 576)]:
        row = {"M": M, "K": K, "N": N, "exact": {}}
        for name, a, b in cases(M, K, N):
            want = (a.double() @ b.double()).to(torch.int32)
            got = torch._int_mm(a, b)
            row["exact"][name] = {"equal": bool(torch.equal(got, want)),
                                  "max_abs_diff": int((got.long() - want.long()).abs().max())}
        a, b = next(cases(M, K, N))[1:]
        row["ms"] = {"int_mm": 1e3 * timed(lambda: torch._int_mm(a, b)),
                     "float32": 1e3 * timed(lambda: (a.float() @ b.float()).to(torch.int32)),
                     "float64": 1e3 * timed(lambda: (a.double() @ b.double()).to(torch.int32))}
        out["shapes"].append(row)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
