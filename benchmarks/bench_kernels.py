"""Every qtutor kernel beside its peers, in one process on one GPU.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_<gpu>.json
    python benchmarks/bench_kernels.py --tune --out benchmarks/results/tune_<gpu>.json

Peers, on the same random weights (fp16 activations unless a peer needs bf16):
cuBLAS fp16 (``x @ W.T``); torch's int4 tinygemm (``_weight_int4pack_mm``, bf16,
groups of 128); bitsandbytes NF4 (``bnb.matmul_4bit``, double-quantized, blocks
of 64), the same weights dequantized by bitsandbytes then multiplied by cuBLAS
(what any batch can do), and LLM.int8() (``bnb.matmul`` with threshold 6.0 on the same CB/SCB);
``torch._int_mm`` (bare, and with torch's per-token quantization and scale
epilogue around it); ``torch._scaled_mm`` on fp8 e4m3 with row-wise scales (with
and without fast accumulation: Triton's fp8 dot on sm_90 accumulates like
``use_fast_accum=True``); and qtutor's W4A16 (GPTQ layout, groups of 128), NF4
(bitsandbytes' own tensors), LLM.int8(), W8A8 int8 and fp8 kernels.

Four copies of every weight rotate so that L2 does not hold one between calls.
Times are medians of ``triton.testing.do_bench_cudagraph`` — calls replayed
from a CUDA graph, so no one's Python launch overhead counts — except where a
peer cannot be captured (bitsandbytes' LLM.int8() copies the outlier columns'
indices to the host): then ``do_bench`` times it, qtutor's LLM.int8() is timed the
same way beside it, and ``timing`` says so per entry. ``fraction_of_copy_bw``:
the bytes a kernel must move (weights, scales, activations, output) over the
measured device-to-device copy bandwidth. ``--tune`` sweeps launch parameters
instead and prints the winners (they become the defaults in ``kernels/``).
The decode part times one token (M = 1) through the seven projections of 32
Llama-3-8B-shaped blocks, CUDA-graph captured.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

from qtutor.kernels import _launch
from qtutor.kernels import llm_int8 as k_int8
from qtutor.kernels import nf4 as k_nf4
from qtutor.kernels import w4a16 as k_w4
from qtutor.kernels import w8a8 as k_w8

# (K, N): the issue #18 targets' two shapes first (a run cut at its time limit keeps them), then the rest
SHAPES = [(8192, 28672), (28672, 8192), (4096, 4096), (8192, 8192), (4096, 14336), (14336, 4096)]
MS = [1, 4, 16, 64, 256]
GROUP = 128
COPIES = 4
BLOCK_8B = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)]

try:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
except Exception as exc:  # noqa: BLE001 - recorded in the JSON, not hidden
    bnb, BNB_ERROR = None, repr(exc)
else:
    BNB_ERROR = None


def copy_bandwidth() -> float:
    """Bytes read + written per second of a 1 GiB device-to-device copy."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def time_us(fn, graph: bool = True, rep: int = 100) -> tuple[float, str]:
    if graph:
        return do_bench_cudagraph(fn, rep=rep, return_mode="median") * 1e3, "cudagraph"
    return do_bench(fn, warmup=25, rep=rep, return_mode="median") * 1e3, "eager"


# ------------------------------------------------------------------ weights

def gptq_w4(K: int, N: int) -> dict:
    """Random 4-bit codes in the GPTQ-v2 layout with plausible scales (the values do not change the work)."""
    return {"qweight": torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, device="cuda"),
            "qzeros": torch.randint(-2**31, 2**31 - 1, (K // GROUP, N // 8), dtype=torch.int32, device="cuda"),
            "scales": (torch.rand(K // GROUP, N, device="cuda") * 0.01).half(),
            "g_idx": (torch.arange(K, device="cuda") // GROUP).to(torch.int32)}


def tinygemm_w4(K: int, N: int):
    q = torch.randint(0, 16, (N, K), dtype=torch.int32, device="cuda")
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
    sz = (torch.rand(K // GROUP, N, 2, device="cuda") * 0.01).to(torch.bfloat16)
    return packed, sz


class Weights:
    """COPIES of each format of one (K, N) weight, all made from the same fp16 matrices."""

    def __init__(self, K: int, N: int, formats: set[str], copies: int = COPIES):
        self.fp16 = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
        self.w4 = [gptq_w4(K, N) for _ in range(copies)] if "w4" in formats else None
        self.tiny = [tinygemm_w4(K, N) for _ in range(copies)] if "tiny" in formats else None
        self.nf4 = [bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                    for w in self.fp16] if "nf4" in formats and bnb else None
        if "int8" in formats:  # LLM.int8()'s CB/SCB (bitsandbytes' own quantizer when present)
            self.cb = [tuple(bnbf.int8_vectorwise_quant(w)[:2]) if bnb else _cb_scb(w) for w in self.fp16]
            self.i8 = [k_w8.quantize_per_token(w) for w in self.fp16]
        if "fp8" in formats:
            self.f8 = [k_w8.quantize_per_token(w, k_w8.FP8) for w in self.fp16]


def _cb_scb(w):
    amax = w.float().abs().amax(dim=1)
    return torch.round(w.float() * (127.0 / amax)[:, None]).to(torch.int8), amax


def nf4_kernel_args(packed, qs):
    return dict(packed=packed, absmax=qs.absmax, code=qs.code.float(), out_features=qs.shape[0],
                blocksize=qs.blocksize, absmax_code=qs.state2.code, absmax2=qs.state2.absmax, offset=qs.offset,
                dq_blocksize=qs.state2.blocksize)


def activations(M: int, K: int, dtype=torch.float16, outliers: bool = False):
    xs = [torch.randn(M, K, device="cuda", dtype=dtype) for _ in range(COPIES)]
    if outliers:  # LLM.int8()'s emergent features: 6 input columns far above the threshold
        for x in xs:
            x[:, torch.arange(6, device="cuda") * (K // 6)] *= 12.0
    return xs


class Rot:
    def __init__(self):
        self.i = 0

    def __call__(self) -> int:
        self.i = (self.i + 1) % COPIES
        return self.i


# -------------------------------------------------------------- one shape

def peers(M: int, K: int, N: int, W: Weights) -> tuple[dict, dict, dict]:
    """{name: fn}, {name: bytes moved}, {name: graph-capturable?} for one (M, K, N)."""
    r = Rot()
    xs = activations(M, K)
    xo = activations(M, K, outliers=True)
    xb = [x.bfloat16() for x in xs]
    fns, nbytes, graph = {}, {}, {}
    act = 2 * M * K + 2 * M * N
    fns["cublas_fp16"] = lambda: (lambda i: xs[i] @ W.fp16[i].T)(r())
    nbytes["cublas_fp16"] = 2 * N * K + act
    w4 = N * K // 2 + (K // GROUP) * N * 2.5
    fns["qtutor_w4a16"] = lambda: (lambda i: k_w4.w4a16_matmul(xs[i], **W.w4[i], group_size=GROUP))(r())
    nbytes["qtutor_w4a16"] = w4 + act
    fns["torch_int4_tinygemm"] = lambda: (lambda i: torch.ops.aten._weight_int4pack_mm(
        xb[i], W.tiny[i][0], GROUP, W.tiny[i][1]))(r())
    nbytes["torch_int4_tinygemm"] = N * K // 2 + (K // GROUP) * N * 4 + act
    nf4b = N * K // 2 + N * K // 64 + act
    if W.nf4 is not None:
        fns["bnb_nf4"] = lambda: (lambda i: bnb.matmul_4bit(xs[i], W.nf4[i][0].t(), quant_state=W.nf4[i][1]))(r())
        fns["qtutor_nf4"] = lambda: (lambda i: k_nf4.nf4_matmul(xs[i], **nf4_kernel_args(*W.nf4[i])))(r())
        nbytes["bnb_nf4"] = nbytes["qtutor_nf4"] = nf4b
        # what a batch of tokens can always do: dequantize the whole weight with bitsandbytes, then cuBLAS
        fns["bnb_nf4_dequant_cublas"] = lambda: (lambda i: xs[i] @ bnbf.dequantize_4bit(*W.nf4[i]).T)(r())
        nbytes["bnb_nf4_dequant_cublas"] = nf4b + 2 * 2 * N * K  # + the fp16 weight written, then read
        states = []
        for cb, scb in W.cb:
            st = bnb.MatmulLtState()
            st.CB, st.SCB, st.has_fp16_weights, st.is_training, st.threshold = cb, scb, False, False, 6.0
            states.append(st)
        fns["bnb_llm_int8"] = lambda: (lambda i: bnb.matmul(xo[i], W.cb[i][0], state=states[i], threshold=6.0))(r())
        graph["bnb_llm_int8"] = False
        nbytes["bnb_llm_int8"] = N * K + 4 * N + act
    fns["qtutor_llm_int8"] = lambda: (lambda i: k_int8.llm_int8_matmul(xo[i], W.cb[i][0], W.cb[i][1], 6.0))(r())
    nbytes["qtutor_llm_int8"] = N * K + 4 * N + act
    fns["qtutor_w8a8_int8"] = lambda: (lambda i: k_w8.w8a8_dynamic(xs[i], *W.i8[i]))(r())
    fns["qtutor_w8a8_int8_fused"] = lambda: (lambda i: k_w8.w8a8_dynamic(xs[i], *W.i8[i], fused=True))(r())
    nbytes["qtutor_w8a8_int8"] = nbytes["qtutor_w8a8_int8_fused"] = N * K + 4 * N + act
    q8 = [k_w8.quantize_per_token(x) for x in xs]
    fns["qtutor_int8_matmul"] = lambda: (lambda i: k_w8.int8_matmul(q8[i][0], W.i8[i][0], q8[i][1], W.i8[i][1]))(r())
    nbytes["qtutor_int8_matmul"] = N * K + M * K + 4 * (M + N) + 2 * M * N
    if M > 16:  # torch._int_mm needs M > 16 on CUDA
        fns["torch_int_mm"] = lambda: (lambda i: torch._int_mm(q8[i][0], W.i8[i][0].T))(r())
        nbytes["torch_int_mm"] = N * K + M * K + 4 * M * N

        def int_mm_scaled(i):
            x = xs[i].float()
            amax = x.abs().amax(dim=1, keepdim=True)
            q = torch.round(x * (127.0 / amax)).to(torch.int8)
            return (torch._int_mm(q, W.i8[i][0].T) * (amax / 127.0) * W.i8[i][1][None, :]).half()

        fns["torch_int_mm_with_scales"] = lambda: int_mm_scaled(r())
        nbytes["torch_int_mm_with_scales"] = N * K + 4 * N + act
    # fp8: pre-quantized activations against torch._scaled_mm; then the fused path
    f8 = [k_w8.quantize_per_token(x, k_w8.FP8) for x in xb]
    fp8b = N * K + M * K + 4 * (M + N) + 2 * M * N
    for fast in (True, False):
        name = "torch_scaled_mm_fp8" + ("_fast_accum" if fast else "")
        fns[name] = (lambda fast: lambda: (lambda i: torch._scaled_mm(
            f8[i][0], W.f8[i][0].T, scale_a=f8[i][1][:, None], scale_b=W.f8[i][1][None, :],
            out_dtype=torch.bfloat16, use_fast_accum=fast))(r()))(fast)
        nbytes[name] = fp8b
    fns["qtutor_fp8_matmul"] = lambda: (lambda i: k_w8.fp8_matmul(f8[i][0], W.f8[i][0], f8[i][1], W.f8[i][1],
                                                                  out_dtype=torch.bfloat16))(r())
    nbytes["qtutor_fp8_matmul"] = fp8b
    fns["qtutor_w8a8_fp8"] = lambda: (lambda i: k_w8.w8a8_dynamic(xb[i], *W.f8[i]))(r())
    nbytes["qtutor_w8a8_fp8"] = N * K + 4 * N + act
    return fns, nbytes, graph


def agreement(M: int, K: int, N: int, W: Weights) -> dict:
    """How far each qtutor kernel is from its peer or reference on this shape (relative max error)."""
    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max())

    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    xo = activations(M, K, outliers=True)[0]
    out = {"w4a16_vs_ref": rel(k_w4.w4a16_matmul(x, **W.w4[0], group_size=GROUP), k_w4.w4a16_ref(x, **W.w4[0]))}
    if W.nf4 is not None:
        packed, qs = W.nf4[0]
        out["nf4_vs_bnb_dequant"] = rel(k_nf4.nf4_matmul(x, **nf4_kernel_args(packed, qs)),
                                        x.float() @ bnbf.dequantize_4bit(packed, qs).float().T)
        st = bnb.MatmulLtState()
        st.CB, st.SCB, st.has_fp16_weights, st.is_training, st.threshold = *W.cb[0], False, False, 6.0
        theirs = bnb.matmul(xo, W.cb[0][0], state=st, threshold=6.0)
        ours = k_int8.llm_int8_matmul(xo, *W.cb[0], 6.0)
        out["llm_int8_vs_bnb"] = rel(ours, theirs)
        out["llm_int8_vs_bnb_equal_fraction"] = float((ours == theirs).float().mean())
    f8x, f8w = k_w8.quantize_per_token(x.bfloat16(), k_w8.FP8), W.f8[0]
    out["fp8_vs_scaled_mm"] = rel(k_w8.fp8_matmul(f8x[0], f8w[0], f8x[1], f8w[1], out_dtype=torch.bfloat16),
                                  torch._scaled_mm(f8x[0], f8w[0].T, scale_a=f8x[1][:, None],
                                                   scale_b=f8w[1][None, :], out_dtype=torch.bfloat16))
    return out


def bench_shapes(bw: float, save) -> list[dict]:
    rows = []
    for K, N in SHAPES:
        W = Weights(K, N, {"w4", "tiny", "nf4", "int8", "fp8"})
        check = agreement(16, K, N, W)
        for M in MS:
            fns, nbytes, graph = peers(M, K, N, W)
            times, modes, errors = {}, {}, {}
            for name, fn in fns.items():
                try:
                    fn()
                    try:
                        times[name], modes[name] = time_us(fn, graph.get(name, True))
                    except Exception as exc:  # noqa: BLE001 - a capture that fails is timed eagerly, and said so
                        if not graph.get(name, True):
                            raise
                        times[name], modes[name] = time_us(fn, False)
                        modes[name] += f" (graph capture failed: {repr(exc)[:120]})"
                except Exception as exc:  # noqa: BLE001 - a peer that cannot run this shape is recorded
                    errors[name] = repr(exc)[:300]
            if "bnb_llm_int8" in times:  # the same eager timing for ours beside it
                times["qtutor_llm_int8_eager"], modes["qtutor_llm_int8_eager"] = time_us(fns["qtutor_llm_int8"], False)
                nbytes["qtutor_llm_int8_eager"] = nbytes["qtutor_llm_int8"]
            row = {"K": K, "N": N, "M": M, "time_us": times, "timing": modes,
                   "fraction_of_copy_bw": {k: nbytes[k] / (t * 1e-6) / bw for k, t in times.items()},
                   "speedup_vs_fp16": {k: times["cublas_fp16"] / t for k, t in times.items()}}
            if errors:
                row["errors"] = errors
            if M == 16:
                row["agreement"] = check
            rows.append(row)
            save(rows)
            print(f"K={K:>5} N={N:>5} M={M:>3} " + " ".join(f"{k}={v:.1f}" for k, v in times.items()), flush=True)
        del W
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------ decode

def bench_decode() -> dict:
    """One token through 32 blocks' seven projections (attention math left out), CUDA-graph captured."""
    n_blocks = 32
    # one copy of each weight: 32 blocks do not fit in L2
    blocks = [[Weights(K, N, {"w4", "tiny", "nf4"}, copies=1) for K, N in BLOCK_8B] for _ in range(n_blocks)]
    mms = {
        "fp16": lambda a, w: a @ w.fp16[0].T,
        "qtutor_w4a16": lambda a, w: k_w4.w4a16_matmul(a, **w.w4[0], group_size=GROUP),
        "torch_int4_tinygemm": lambda a, w: torch.ops.aten._weight_int4pack_mm(
            a.bfloat16(), w.tiny[0][0], GROUP, w.tiny[0][1]).half(),
    }
    if bnb:
        mms["qtutor_nf4"] = lambda a, w: k_nf4.nf4_matmul(a, **nf4_kernel_args(*w.nf4[0]))
        mms["bnb_nf4"] = lambda a, w: bnb.matmul_4bit(a, w.nf4[0][0].t(), quant_state=w.nf4[0][1])
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)

    def step(mm):
        h = x
        for blk in blocks:
            q, k, v = mm(h, blk[0]), mm(h, blk[1]), mm(h, blk[2])
            h = h + mm(q, blk[3]) * 1e-3  # attention is left out: o_proj reads q's shape
            up = torch.nn.functional.silu(mm(h, blk[4])) * mm(h, blk[5])
            h = h + mm(up, blk[6]) * 1e-3
        return h

    out = {}
    for name, mm in mms.items():
        try:
            step(mm)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(mm)
            ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
            out[name] = {"ms_per_token": ms, "tokens_per_s": 1e3 / ms}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": repr(exc)[:300]}
    for name in out:
        if "ms_per_token" in out[name]:
            out[name]["speedup_vs_fp16"] = out["fp16"]["ms_per_token"] / out[name]["ms_per_token"]
    return out


# -------------------------------------------------------------------- tune

def _sweep(label: str, configs: list[dict], cases: list, call) -> dict:
    """The config with the lowest summed time over ``cases``; every config's total is printed."""
    best, best_t = None, float("inf")
    for cfg in configs:
        try:
            t = 0.0
            for case in cases:
                fn = (lambda case=case: call(case, cfg))
                fn()
                t += time_us(fn, rep=30)[0]
        except Exception as exc:  # noqa: BLE001 - a config that does not compile/fit is skipped
            print(f"  {label} {cfg} failed: {repr(exc)[:120]}", flush=True)
            continue
        print(f"  {label} {cfg} {t:.1f}us", flush=True)
        if t < best_t:
            best, best_t = cfg, t
    print(f"BEST {label} {best} {best_t:.1f}us", flush=True)
    return {"best": best, "total_us": best_t}


def tune() -> dict:
    shapes = [(4096, 4096), (8192, 28672), (14336, 4096)]
    Ws = {s: Weights(*s, {"w4", "nf4", "int8", "fp8"}) for s in shapes}
    xs = {(M, K): torch.randn(M, K, device="cuda", dtype=torch.float16) for M in (1, 16, 64, 256)
          for K in {k for k, _ in shapes}}
    cases = lambda M: [(M, K, N) for K, N in shapes]  # noqa: E731
    res = {}
    grid = [dict(block_n=n, block_k=128, target_programs=p, num_warps=w)
            for n, p, w in itertools.product([64, 128, 256], [528, 1056, 2112], [4, 8])]
    res["w4a16_gemv"] = _sweep("w4a16 gemv M=1", grid, cases(1), lambda c, cfg: k_w4.w4a16_matmul(
        xs[c[0], c[1]], **Ws[c[1:]].w4[0], group_size=GROUP, gemv=cfg))
    for M, mb in ((16, 16), (64, 64), (256, 128)):
        grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w, num_stages=s, max_block_m=mb)
                for n, k, p, w, s in itertools.product([64, 128], [64, 128], [264, 528], [4, 8], [3, 4])
                if not (M == 256 and p == 528)]
        res[f"w4a16_gemm_M{M}"] = _sweep(f"w4a16 gemm M={M}", grid, cases(M), lambda c, cfg: k_w4.w4a16_matmul(
            xs[c[0], c[1]], **Ws[c[1:]].w4[0], group_size=GROUP, gemm=cfg))
    if bnb:
        grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w)
                for n, k, p, w in itertools.product([32, 64, 128], [128, 256, 512], [528, 1056], [4, 8])]
        res["nf4_gemv"] = _sweep("nf4 gemv M=1", grid, cases(1), lambda c, cfg: k_nf4.nf4_matmul(
            xs[c[0], c[1]], **nf4_kernel_args(*Ws[c[1:]].nf4[0]), gemv=cfg))
        grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w, num_stages=3, max_block_m=64)
                for n, k, p, w in itertools.product([64, 128], [64, 128], [264, 528], [4, 8])]
        res["nf4_gemm_M16"] = _sweep("nf4 gemm M=16", grid, cases(16), lambda c, cfg: k_nf4.nf4_matmul(
            xs[c[0], c[1]], **nf4_kernel_args(*Ws[c[1:]].nf4[0]), gemm=cfg))
    for M in (1, 64):
        grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w, num_stages=s, max_block_m=64)
                for n, k, p, w, s in itertools.product([32, 64, 128], [64, 128], [264, 528], [4], [3, 4])]
        res[f"llm_int8_M{M}"] = _sweep(f"llm_int8 M={M}", grid, cases(M), lambda c, cfg: k_int8.llm_int8_matmul(
            xs[c[0], c[1]], *Ws[c[1:]].cb[0], 6.0, launch=cfg))
    res.update(tune_w8a8(Ws, xs, cases, (16, 64, 256)))
    return res


W8_GRID = {16: [(16, n, k, w, s) for n, k, w, s in itertools.product([32, 64, 128], [128, 256], [4], [3, 4])],
           64: [(64, n, k, w, s) for n, k, w, s in itertools.product([64, 128], [64, 128], [4, 8], [3, 4])],
           256: [(m, n, k, w, s) for m, n, k, w, s in itertools.product([64, 128], [128, 256], [64, 128], [4, 8], [3])]}


def tune_w8a8(Ws, xs, cases, Ms) -> dict:
    """One launch configuration per M bucket for int8 and fp8 together (they share ``w8a8.LAUNCH``)."""
    res = {}
    for M in Ms:
        grid = [dict(block_m=m, block_n=n, block_k=k, num_warps=w, num_stages=s) for m, n, k, w, s in W8_GRID[M]]

        def call(c, cfg):
            qx = k_w8.quantize_per_token(xs[c[0], c[1]])
            fx = k_w8.quantize_per_token(xs[c[0], c[1]].bfloat16(), k_w8.FP8)
            k_w8.int8_matmul(qx[0], Ws[c[1:]].i8[0][0], qx[1], Ws[c[1:]].i8[0][1], launch=cfg)
            k_w8.fp8_matmul(fx[0], Ws[c[1:]].f8[0][0], fx[1], Ws[c[1:]].f8[0][1], launch=cfg)

        res[f"w8a8_M{M}"] = _sweep(f"w8a8 int8+fp8 M={M}", grid, cases(M), call)
    return res


GEMV_SHAPES = [(8192, 28672), (28672, 8192), (4096, 14336), (14336, 4096), (4096, 4096)]


def tune_gemv() -> dict:
    """The M = 1 launch parameters of the W4A16 and NF4 GEMVs and the NF4 dequantize kernel (M > 1), swept over
    the targets' shapes and Llama-3-8B's and applied for the benchmark that follows."""
    Ws = {s: Weights(*s, {"w4", "nf4"}, copies=1) for s in GEMV_SHAPES}
    xs = {K: torch.randn(1, K, device="cuda", dtype=torch.float16) for K in {k for k, _ in GEMV_SHAPES}}
    res = {}
    grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w, x_split=True, fold_zero=True)
            for n, k, p, w in itertools.product([64, 128, 256], [64, 128, 256], [1056, 2112, 4224], [4, 8])]
    grid += [dict(block_n=n, block_k=128, target_programs=p, num_warps=4, x_split=True, fold_zero=False)
             for n, p in itertools.product([128, 256], [1056, 2112])]
    res["w4a16_gemv"] = _sweep("w4a16 gemv M=1", grid, GEMV_SHAPES, lambda c, cfg: k_w4.w4a16_matmul(
        xs[c[0]], **Ws[c].w4[0], group_size=GROUP, gemv=cfg))
    k_w4.GEMV.update(res["w4a16_gemv"]["best"])
    if bnb:
        grid = [dict(block_n=n, block_k=k, target_programs=p, num_warps=w, x_split=True)
                for n, k, p, w in itertools.product([32, 64, 128], [128, 256], [1056, 2112], [4, 8])]
        res["nf4_gemv"] = _sweep("nf4 gemv M=1", grid, GEMV_SHAPES, lambda c, cfg: k_nf4.nf4_matmul(
            xs[c[0]], **nf4_kernel_args(*Ws[c].nf4[0]), gemv=cfg))
        k_nf4.GEMV.update(res["nf4_gemv"]["best"])
        saved = dict(k_nf4.DEQUANT)
        grid = [dict(block=b, num_warps=w) for b, w in itertools.product([128, 256, 512, 1024], [4, 8])]

        def dequant(c, cfg):
            k_nf4.DEQUANT.update(cfg)
            args = nf4_kernel_args(*Ws[c].nf4[0])
            args.pop("out_features")
            return k_nf4.nf4_dequantize(**args, shape=(c[1], c[0]))

        res["nf4_dequantize"] = _sweep("nf4 dequantize", grid, GEMV_SHAPES, dequant)
        k_nf4.DEQUANT.update(res["nf4_dequantize"]["best"] or saved)
        # the peer on the same shapes: bitsandbytes' dequantize_4bit
        res["bnb_dequantize_4bit_us"] = {f"{K}x{N}": time_us(lambda W=Ws[(K, N)]: bnbf.dequantize_4bit(*W.nf4[0]))[0]
                                         for K, N in GEMV_SHAPES}
        print("bnb dequantize_4bit", res["bnb_dequantize_4bit_us"], flush=True)
    return res


def ab_split_k() -> dict:
    """Split-K epilogue in one launch (the last program of a tile stores) against three (memset, atomics, cast):
    both timed on the same calls; the faster in total is kept for the benchmark that follows."""
    rows, total = [], {True: 0.0, False: 0.0}
    for K, N in SHAPES:
        W = Weights(K, N, {"w4", "nf4", "int8"}, copies=1)
        for M in (1, 4, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.float16)
            calls = {"w4a16": lambda: k_w4.w4a16_matmul(x, **W.w4[0], group_size=GROUP),
                     "llm_int8": lambda: k_int8.llm_int8_matmul(x, *W.cb[0], 6.0)}
            if bnb and M == 1:
                calls["nf4"] = lambda: k_nf4.nf4_matmul(x, **nf4_kernel_args(*W.nf4[0]))
            for name, fn in calls.items():
                row = {"K": K, "N": N, "M": M, "kernel": name}
                for one in (True, False):
                    _launch.ONE_LAUNCH_SPLIT_K = one
                    fn()
                    row["one_launch_us" if one else "three_launches_us"] = t = time_us(fn, rep=50)[0]
                    total[one] += t
                rows.append(row)
                print(row, flush=True)
        del W
    _launch.ONE_LAUNCH_SPLIT_K = total[True] <= total[False]
    print(f"split-K epilogue: one launch {total[True]:.0f} us, three {total[False]:.0f} us in total", flush=True)
    return {"rows": rows, "total_us": {"one_launch": total[True], "three_launches": total[False]},
            "kept": "one_launch" if _launch.ONE_LAUNCH_SPLIT_K else "three_launches"}


def tune_w8a8_large() -> dict:
    """The M > 64 bucket of ``w8a8.LAUNCH``, swept and applied for the benchmark that follows."""
    shapes = [(4096, 4096), (8192, 28672), (14336, 4096)]
    Ws = {s: Weights(*s, {"int8", "fp8"}, copies=1) for s in shapes}
    xs = {(256, K): torch.randn(256, K, device="cuda", dtype=torch.float16) for K, _ in shapes}
    res = tune_w8a8(Ws, xs, lambda M: [(M, K, N) for K, N in shapes], (256,))
    k_w8.LAUNCH[-1].update(res["w8a8_M256"]["best"])
    return res


# -------------------------------------------------------------------- main

def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version(), "bitsandbytes": bnb.__version__ if bnb else None},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--tune", action="store_true", help="sweep launch parameters instead of benchmarking")
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--ab-split-k", action="store_true",
                        help="first time both split-K epilogues and keep the faster")
    parser.add_argument("--sweep-gemv", action="store_true",
                        help="first sweep and apply the M = 1 launch parameters of the W4A16 and NF4 GEMVs")
    parser.add_argument("--sweep-w8a8-large", action="store_true",
                        help="first sweep and apply the M > 64 launch bucket of the W8A8 kernels")
    args = parser.parse_args()
    torch.manual_seed(0)

    def save(part=None):  # written after every row: a run cut short keeps what it measured
        if isinstance(part, list):
            result["shapes"] = part
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    result = {"benchmark": "tune" if args.tune else "kernels",
              "command": "python benchmarks/bench_kernels.py " + ("--tune " if args.tune else "") + f"--out {args.out}",
              **environment()}
    if BNB_ERROR:
        result["bitsandbytes_error"] = BNB_ERROR
    if args.tune:
        result["sweeps"] = tune()
    else:
        if args.ab_split_k:
            result["ab_split_k"] = ab_split_k()
            result["command"] = result["command"].replace("--out", "--ab-split-k --out")
        if args.sweep_gemv:
            result["sweep_gemv"] = tune_gemv()
            result["command"] = result["command"].replace("--out", "--sweep-gemv --out")
        if args.sweep_w8a8_large:
            result["sweep_w8a8_large"] = tune_w8a8_large()
            result["command"] = result["command"].replace("--out", "--sweep-w8a8-large --out")
        bw = copy_bandwidth()
        result.update({
            "copy_bandwidth_TBps": bw / 1e12,
            "timing": "µs per call: median of triton.testing.do_bench_cudagraph, or of do_bench where 'timing' says eager",
            "launch": {"one_launch_split_k": _launch.ONE_LAUNCH_SPLIT_K, "w4a16_gemv": k_w4.GEMV, "w4a16_gemm": k_w4.GEMM, "nf4_gemv": k_nf4.GEMV,
                       "nf4_gemm": k_nf4.GEMM, "llm_int8": k_int8.LAUNCH, "w8a8": k_w8.LAUNCH},
        })
        if not args.no_decode:  # first: a run cut at its time limit keeps the decode step and the first shapes
            result["decode_8b_shaped"] = bench_decode()
            print(json.dumps(result["decode_8b_shaped"], indent=1), flush=True)
            save()
        bench_shapes(bw, save)
    save(result)


if __name__ == "__main__":
    main()
