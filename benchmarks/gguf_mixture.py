"""GGUF mixtures on SmolLM2: llama.cpp's hand-written Q4_K_M (and its siblings) against an allocator on measured KL.

1. **The map.** Each of the 210 decoder linears alone encoded and decoded in each GGML type whose
   block divides its rows (qtutor's byte-identical ports of ggml-quants.c; every other linear float),
   KL(p_float ‖ p_quant) per token on held-out WikiText-2 *train* text (``calibration_samples(...,
   seed=1, heldout=True)``), never on the test windows scored below. SmolLM2's rows are 576 long
   (1536 for ``ffn_down``), so the k-quants reach only ``ffn_down``.
2. **The comparison.** For each llama.cpp file type (Q2_K, Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_M): its
   per-tensor types as ``llama-quantize`` chooses them (:func:`qtutor.diagnose.gguf_mix.file_type_types`),
   and :func:`qtutor.diagnose.gguf_mix.allocate_ggml` at a budget equal to that mixture's exact size,
   both scored on WikiText-2 test (perplexity on every 512-token window, KL / top-1 on the first
   ``--kl-windows``). The embedding (tied output) and norms stay as llama.cpp stores them for every
   file type here (Q8_0 and F32), identical on both sides, so only the decoder linears differ.
3. **Q4_1 is left out of the allocator's choices** (``--exclude``): the course's float model *is* the
   dequantized Q4_1 file, so Q4_1 re-encodes it losslessly — a free lunch no real model offers.
   One extra row allocates with Q4_1 allowed, to show that artefact.

    python benchmarks/gguf_mixture.py --device cuda --out results/gguf_mixture_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import numpy as np
import torch

from mixed_precision import kl, logprobs, perplexity_all  # sibling scripts (benchmarks/ is on sys.path)
from sensitivity import _version

FILE_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--map-windows", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--kl-windows", type=int, default=16)
    parser.add_argument("--test-windows", type=int, default=None, help="perplexity windows (default: all)")
    parser.add_argument("--exclude", default="Q4_1", help="GGML types the allocator may not choose")
    parser.add_argument("--limit-layers", type=int, default=None, help="first N layers only (a smoke test)")
    args = parser.parse_args()

    import transformers

    from qtutor.data import calibration_samples
    from qtutor.diagnose.allocate import linear_shapes
    from qtutor.diagnose.gguf_mix import GGML_TYPES, allocate_ggml, file_type_types, ggml_options, mixture_bits
    from qtutor.eval import EvalConfig, eval_windows
    from qtutor.gguf.io import dequantize_tensor, quantize_tensor
    from qtutor.model import decoder_linears, load_model

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 throughout
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    start = time.time()
    model, tok = load_model(device=args.device)
    map_windows = calibration_samples(tok, n_samples=args.map_windows, seq_len=args.ctx, seed=1,
                                      heldout=True).to(args.device)
    test = eval_windows(tok, EvalConfig(ctx=args.ctx, n_windows=args.test_windows)).to(args.device)
    kl_test = test[: args.kl_windows]

    ref_map = logprobs(model, map_windows)
    ref_map_p = ref_map.exp()
    ref_test = logprobs(model, kl_test)
    ref_test_p, ref_test_top = ref_test.exp(), ref_test.argmax(-1)

    linears = decoder_linears(model)
    names = list(linears)[: args.limit_layers]
    shapes = {n: s for n, s in linear_shapes(model).items() if n in names}
    originals = {n: linears[n].weight.detach().clone() for n in names}
    decoded: dict[tuple[str, str], torch.Tensor] = {}  # (layer, type) -> decoded weight on the device
    rows = []
    for k, name in enumerate(names):
        lin = linears[name]
        w = originals[name]
        a = w.float().cpu().numpy()
        for opt in ggml_options(w.shape[1], GGML_TYPES):
            t = opt.name
            back = dequantize_tensor(quantize_tensor(a, t), t, a.shape[1])
            decoded[name, t] = torch.from_numpy(np.ascontiguousarray(back)).to(w.device, w.dtype)
            with torch.no_grad():
                lin.weight.copy_(decoded[name, t])
                d = kl(ref_map, ref_map_p, logprobs(model, map_windows))
                lin.weight.copy_(w)
            rows.append({"layer": name, "type": t, "kl": d, "n_params": w.numel(),
                         "bits_per_weight": opt.bits(*shapes[name]) / w.numel(),
                         "weight_rel_err": float((decoded[name, t] - w).norm() / w.norm())})
        print(f"map {k + 1}/{len(names)} {name} {time.time() - start:.0f} s", flush=True)

    damage: dict = {}
    for r in rows:
        damage.setdefault(r["layer"], {})[r["type"]] = r["kl"]
    n_weights = sum(o * i for o, i in shapes.values())
    excluded = [t for t in args.exclude.split(",") if t]
    choices = [t for t in GGML_TYPES if t not in excluded]

    @torch.no_grad()
    def score(types: dict) -> dict:
        try:
            for n, t in types.items():
                linears[n].weight.copy_(decoded[n, t])
            lp = logprobs(model, kl_test)
            return {"perplexity": perplexity_all(model, test), "kl": kl(ref_test, ref_test_p, lp),
                    "top1": float((lp.argmax(-1) == ref_test_top).float().mean())}
        finally:
            for n in names:
                linears[n].weight.copy_(originals[n])

    def counts(types: dict) -> dict:
        out: dict[str, int] = {}
        for t in types.values():
            out[t] = out.get(t, 0) + 1
        return dict(sorted(out.items()))

    results = [{"kind": "float", "name": "float", "bits_per_weight": 32.0, **score({})}]
    for ft in FILE_TYPES:
        llama = {n: t for n, t in file_type_types(model, ft).items() if n in names}
        bits = mixture_bits(shapes, llama)
        row = {"kind": "llama.cpp", "name": ft, "bits_per_weight": bits / n_weights, "megabytes": bits / 8e6,
               "summed_map_kl": sum(damage[n][t] for n, t in llama.items()), "type_counts": counts(llama),
               "types": llama, **score(llama)}
        results.append(row)
        print("llama.cpp", {k: v for k, v in row.items() if k != "types"}, flush=True)
        budget = bits / n_weights
        for label, allowed in (("allocated", choices), ("allocated with Q4_1", list(GGML_TYPES))):
            if label != "allocated" and ft != "Q4_K_M":
                continue
            alloc = allocate_ggml(damage, shapes, budget, allowed)
            types = {n: o.name for n, o in alloc.schemes.items()}
            row = {"kind": label, "name": f"{label} at {ft}'s size", "file_type": ft, "budget": budget,
                   "bits_per_weight": alloc.bits_per_weight, "megabytes": mixture_bits(shapes, types) / 8e6,
                   "summed_map_kl": alloc.damage, "type_counts": counts(types), "types": types, **score(types)}
            results.append(row)
            print(label, {k: v for k, v in row.items() if k != "types"}, flush=True)

    record = {
        "what": "GGUF mixtures of SmolLM2-135M-Instruct's decoder linears (dequantized Q4_1 float model): llama.cpp's "
                "hand-written per-tensor types for each file type against an allocator on a measured per-tensor KL "
                "map at the same stored size, scored on WikiText-2 test",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "versions": {"torch": torch.__version__, "triton": _version("triton"), "gguf": _version("gguf"),
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "types": list(GGML_TYPES), "allocator_excludes": excluded,
            "coders": "qtutor.gguf quantize_tensor / dequantize_tensor (byte-identical with llama.cpp's "
                      "ggml-quants.c, no importance matrix)",
            "dtype": "float32, TF32 off",
            "map": f"KL(p_float || p_quant) per token on {args.map_windows} x {args.ctx} held-out WikiText-2 train "
                   "tokens (calibration_samples seed 1, heldout=True), one linear encoded at a time",
            "test": f"perplexity on the first {test.shape[0]} non-overlapping {args.ctx}-token WikiText-2 test windows "
                    f"(no BOS); KL and top-1 on the first {args.kl_windows} of them",
            "size": "bits per weight of the 210 decoder linears as GGUF stores them (blocks x type size); the "
                    "embedding (Q8_0, tied output) and norms (F32) are the same in every mixture here",
            "llama_cpp_rules": "qtutor.gguf.file_types.choose_tensor_type (llama_tensor_get_type of the llama.cpp "
                               "vendored by llama-cpp-python 0.3.36, dense-Llama branches, no imatrix)",
        },
        "wall_s": round(time.time() - start, 1),
        "rows": rows,
        "results": results,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("wrote", args.out, len(rows), "map rows,", len(results), "scored models in", record["wall_s"], "s")


if __name__ == "__main__":
    main()
