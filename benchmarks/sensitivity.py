"""The full per-layer sensitivity map of SmolLM2 on a GPU: every decoder linear alone, RTN and GPTQ, 2/3/4/8 bits.

For each of the 210 decoder linears (30 blocks × 7 projections), each method (RTN on the shared
grid, GPTQ with the reference defaults) and each n_bits in {2, 3, 4, 8} at one group size: quantize
that layer alone, every other layer float, and measure KL(p_float ‖ p_quant) per token and top-1
agreement on held-out WikiText-2 test windows, plus the three proxies of
``qtutor.diagnose.sensitivity`` (activation-weighted, Hessian-trace-weighted, plain weight error).
KL and top-1 are computed on the GPU with the same formulas as ``qtutor.eval.logit_agreement``
(which moves every window's log-probabilities to the CPU: too slow for 1,680 evaluations).

    python benchmarks/sensitivity.py --device cuda --out results/sensitivity_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bits", default="2,3,4,8")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--methods", default="RTN,GPTQ")
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--limit-layers", type=int, default=None, help="first N layers only (a smoke test)")
    args = parser.parse_args()

    import transformers

    from qtutor.data import calibration_samples
    from qtutor.diagnose.sensitivity import PROXIES, activation_sq_means, gptq_hessians, layer_info, proxy_damage, \
        quantized_weight
    from qtutor.eval import EvalConfig, eval_windows
    from qtutor.model import decoder_linears, load_model

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 throughout, as the recorded quality table
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    start = time.time()
    model, tok = load_model(device=args.device)
    bits = [int(b) for b in args.bits.split(",")]
    methods = args.methods.split(",")
    windows = eval_windows(tok, EvalConfig(ctx=args.ctx, n_windows=args.eval_windows)).to(args.device)
    calib = calibration_samples(tok, n_samples=args.calib_samples, seq_len=args.ctx, seed=0)

    @torch.no_grad()
    def logprobs() -> torch.Tensor:
        return F.log_softmax(model(windows, use_cache=False).logits.float(), dim=-1)  # (n, ctx, vocab)

    ref = logprobs()
    ref_p, ref_top = ref.exp(), ref.argmax(-1)

    @torch.no_grad()
    def agreement() -> dict:
        lp = logprobs()
        return {"kl": float((ref_p * (ref - lp)).sum() / windows.numel()),
                "top1": float((lp.argmax(-1) == ref_top).float().mean())}

    linears = decoder_linears(model)
    names = list(linears)[: args.limit_layers]
    x_sq = activation_sq_means(model, calib)
    solvers = gptq_hessians(model, calib, names) if "GPTQ" in methods else {}
    rows = []
    for k, name in enumerate(names):
        block, proj = layer_info(name)
        lin = linears[name]
        w = lin.weight.detach().clone()
        for method in methods:
            for n_bits in bits:
                w_hat = quantized_weight(w, n_bits, args.group_size, method, solvers.get(name))
                with torch.no_grad():
                    lin.weight.copy_(w_hat)
                    a = agreement()
                    lin.weight.copy_(w)
                row = {"layer": name, "block": block, "proj": proj, "bits": n_bits, "group_size": args.group_size,
                       "method": method, "kl": a["kl"], "top1": a["top1"], "n_params": w.numel()}
                row.update({f"proxy_{p}": proxy_damage(w, w_hat, x_sq[name].to(w.device), p) for p in PROXIES})
                rows.append(row)
        solvers.pop(name, None)
        print(f"{k + 1}/{len(names)} {name} {time.time() - start:.0f} s", flush=True)

    record = {
        "what": "per-layer sensitivity of SmolLM2-135M-Instruct (dequantized Q4_1 float model): one decoder linear "
                "quantized at a time, all others float",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "versions": {"torch": torch.__version__, "triton": getattr(sys.modules.get("triton"), "__version__", None)
                     or _version("triton"), "transformers": transformers.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "settings": {"bits": bits, "group_size": args.group_size, "methods": methods, "dtype": "float32, TF32 off",
                     "eval": f"WikiText-2 test, first {args.eval_windows} windows of {args.ctx} tokens, no BOS",
                     "calibration": f"{args.calib_samples} x {args.ctx} tokens, WIKITEXT calibration split, seed 0 "
                                    "(GPTQ Hessians and the proxies' E[x^2], from the float model)",
                     "gptq": "GPTQConfig(n_bits, group_size) reference defaults (percdamp 0.01, blocksize 128)",
                     "kl": "mean over tokens of KL(p_float || p_quant), nats/token"},
        "wall_s": round(time.time() - start, 1),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("wrote", args.out, len(rows), "rows in", record["wall_s"], "s")


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
