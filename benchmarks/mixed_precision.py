"""Mixed precision by measured sensitivity on SmolLM2, on a GPU: the KL map over every scheme, then allocated vs uniform.

1. **The map.** Each of the 210 decoder linears quantized alone (RTN on the shared grid, every other
   linear float) in each of the allocator's 16 schemes — {2, 3, 4, 8} bits × groups of {32, 64, 128}
   and per channel — and KL(p_float ‖ p_quant) per token measured on **held-out calibration text**
   (``calibration_samples(..., seed=1, heldout=True)``: the last 10 % of the WikiText-2 *train*
   split), never on the test windows the models are scored on below. The activation-weighted and
   plain weight-error proxies ride along.
2. **The Pareto front.** For each budget, :func:`qtutor.diagnose.allocate.allocate` picks one scheme per
   layer minimising the summed measured KL; the mixed model and every uniform scheme are scored on
   WikiText-2 **test**: perplexity on all non-overlapping 512-token windows and KL / top-1 on the first
   ``--kl-windows`` of them.

    python benchmarks/mixed_precision.py --device cuda --out results/mixed_precision_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F

from sensitivity import _version  # the sibling script (benchmarks/ is on sys.path when a script there runs)


@torch.no_grad()
def logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of every next token, in batches of 8 windows."""
    return torch.cat([F.log_softmax(model(b, use_cache=False).logits.float(), dim=-1) for b in ids.split(8)])


def kl(ref: torch.Tensor, ref_p: torch.Tensor, lp: torch.Tensor) -> float:
    """KL(p_ref || p) per token, from the reference's log-probabilities (and their exp) and the model's."""
    return float((ref_p * (ref - lp)).sum() / lp.shape[0] / lp.shape[1])


@torch.no_grad()
def perplexity_all(model, test: torch.Tensor) -> float:
    """Perplexity over every window of ``test`` (no BOS), in batches of 16."""
    nll, n = 0.0, 0
    for b in test.split(16):
        logits = model(b, use_cache=False).logits.float()
        nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                     reduction="sum"))
        n += b[:, 1:].numel()
    return math.exp(nll / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--map-windows", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--kl-windows", type=int, default=16)
    parser.add_argument("--test-windows", type=int, default=None, help="perplexity windows (default: all)")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--budgets", default="2.5,2.75,3.0,3.25,3.5,3.75,4.0,4.25,4.5,5.0,6.0")
    parser.add_argument("--limit-layers", type=int, default=None, help="first N layers only (a smoke test)")
    args = parser.parse_args()

    import transformers

    from qtutor.data import calibration_samples
    from qtutor.diagnose.allocate import ALL_SCHEMES, allocate, model_bits_per_weight, linear_shapes
    from qtutor.diagnose.sensitivity import activation_sq_means, layer_info, proxy_damage, quantized_weight
    from qtutor.eval import EvalConfig, eval_windows
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
    calib = calibration_samples(tok, n_samples=args.calib_samples, seq_len=args.ctx, seed=0)

    ref_map = logprobs(model, map_windows)
    ref_map_p = ref_map.exp()
    ref_test = logprobs(model, kl_test)
    ref_test_p, ref_test_top = ref_test.exp(), ref_test.argmax(-1)

    linears = decoder_linears(model)
    names = list(linears)[: args.limit_layers]
    x_sq = activation_sq_means(model, calib)
    rows = []
    for k, name in enumerate(names):
        block, proj = layer_info(name)
        lin = linears[name]
        w = lin.weight.detach().clone()
        for s in ALL_SCHEMES:
            w_hat = quantized_weight(w, s.n_bits, s.group_size, "RTN")
            with torch.no_grad():
                lin.weight.copy_(w_hat)
                d = kl(ref_map, ref_map_p, logprobs(model, map_windows))
                lin.weight.copy_(w)
            rows.append({"layer": name, "block": block, "proj": proj, "bits": s.n_bits, "group_size": s.group_size,
                         "kl": d, "n_params": w.numel(),
                         "proxy_activation": proxy_damage(w, w_hat, x_sq[name].to(w.device), "activation"),
                         "proxy_weight": proxy_damage(w, w_hat, x_sq[name].to(w.device), "weight")})
        print(f"map {k + 1}/{len(names)} {name} {time.time() - start:.0f} s", flush=True)

    shapes = {n: s for n, s in linear_shapes(model).items() if n in names}
    damage: dict = {}
    for r in rows:
        damage.setdefault(r["layer"], {})[next(s for s in ALL_SCHEMES if (s.n_bits, s.group_size)
                                                == (r["bits"], r["group_size"]))] = r["kl"]
    originals = {n: linears[n].weight.detach().clone() for n in names}

    @torch.no_grad()
    def score(schemes: dict) -> dict:
        try:
            for n, s in schemes.items():
                linears[n].weight.copy_(quantized_weight(originals[n], s.n_bits, s.group_size, "RTN"))
            lp = logprobs(model, kl_test)
            return {"perplexity": perplexity_all(model, test), "kl": kl(ref_test, ref_test_p, lp),
                    "top1": float((lp.argmax(-1) == ref_test_top).float().mean())}
        finally:
            for n in names:
                linears[n].weight.copy_(originals[n])

    pareto = [{"kind": "float", "scheme": "float", "bits_per_weight": 32.0, **score({})}]
    for s in ALL_SCHEMES:
        schemes = dict.fromkeys(names, s)
        pareto.append({"kind": "uniform", "scheme": s.label, "bits_per_weight": model_bits_per_weight(shapes, schemes),
                       **score(schemes)})
        print("uniform", pareto[-1], flush=True)
    for budget in (float(b) for b in args.budgets.split(",")):
        alloc = allocate(damage, shapes, budget)
        counts: dict[str, int] = {}
        for s in alloc.schemes.values():
            counts[s.label] = counts.get(s.label, 0) + 1
        pareto.append({"kind": "allocated", "scheme": f"mixed ≤ {budget} bpw", "budget": budget,
                       "bits_per_weight": alloc.bits_per_weight, "summed_map_kl": alloc.damage,
                       "scheme_counts": counts, "schemes": {n: s.label for n, s in alloc.schemes.items()},
                       **score(alloc.schemes)})
        print("allocated", {k: v for k, v in pareto[-1].items() if k != "schemes"}, flush=True)

    record = {
        "what": "mixed precision by measured per-layer KL on SmolLM2-135M-Instruct (dequantized Q4_1 float model): "
                "the KL map of every decoder linear in every scheme (RTN), then the allocator's mixed models and "
                "every uniform scheme scored on WikiText-2 test",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "versions": {"torch": torch.__version__, "triton": _version("triton"),
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "schemes": [s.label for s in ALL_SCHEMES], "dtype": "float32, TF32 off", "method": "RTN (shared grid)",
            "map": f"KL(p_float || p_quant) per token on {args.map_windows} x {args.ctx} held-out WikiText-2 "
                   "train tokens (calibration_samples seed 1, heldout=True), one layer quantized at a time",
            "test": f"perplexity on the first {test.shape[0]} non-overlapping {args.ctx}-token WikiText-2 test windows "
                    f"(no BOS); KL and top-1 on the first {args.kl_windows} of them",
            "proxies": f"E[x^2] from {args.calib_samples} x {args.ctx} WikiText-2 calibration tokens, seed 0",
            "size": "bits per weight of the decoder linears: n_bits codes + fp16 scale + n_bits zero-point per group",
        },
        "wall_s": round(time.time() - start, 1),
        "rows": rows,
        "pareto": pareto,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("wrote", args.out, len(rows), "map rows,", len(pareto), "scored models in", record["wall_s"], "s")


if __name__ == "__main__":
    main()
