"""SmolLM2 with a quantized KV cache up to its 8192-token limit: perplexity by context position, greedy agreement, bytes held.

    python benchmarks/kv_cache_quality.py --device cuda --out benchmarks/results/kv_cache_quality_h200.json

Settings (``qtutor.kvcache.quantized_cache``): the float cache, FP8 E4M3 (scale 1), and KIVI int8 / int4 / int2
(keys per channel over groups of 32 tokens, values per token over groups of 32 channels, the newest 128–159
tokens in full precision), plus two int2 ablations: no residual window, and keys grouped per token like values; and the peer, transformers'
``QuantizedCache`` on optimum-quanto (``quanto_int4``, ``quanto_int2``), where it is installed.

Perplexity: ``--windows`` non-overlapping windows of ``--ctx`` tokens from the start of WikiText-2 test, fed
through the cache ``--chunk`` tokens at a time (each chunk attends to itself in full precision and to every older
token as the cache holds it), scored by position bucket. Greedy agreement: ``--n-new`` tokens against the float
cache's, from the course's short chat prompts (which never leave a 128-token residual window) and from
``--long-prompt`` tokens of WikiText test that follow the perplexity windows. Bytes held: ``held_bytes`` after the
first window (``ctx`` tokens). float32 weights and compute (no TF32), as the course's CPU runs.

``--held-only`` measures only the bytes held after the first window (no perplexity, no generation): the count does
not depend on the device, so it runs on a CPU too —

    python benchmarks/kv_cache_quality.py --device cpu --held-only --settings float,int4,quanto_int4,int2,quanto_int2 \
        --out benchmarks/results/kv_cache_held.json
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

PROMPTS = ["Explain in two sentences why the sky is blue.",
           "Write a short Python function that reverses a string.",
           "What is the capital of France, and what is it known for?",
           "Give three tips for learning a new language."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--n-new", type=int, default=64)
    ap.add_argument("--long-prompt", type=int, default=2000, help="tokens of WikiText before greedy continuation")
    ap.add_argument("--settings", default="float,fp8,int8,int4,int2,int2_no_residual,int2_keys_per_token")
    ap.add_argument("--held-only", action="store_true", help="only the bytes each cache holds after one window")
    a = ap.parse_args()

    import transformers
    from transformers.cache_utils import DynamicCache

    from qtutor.eval import EvalConfig, eval_windows
    from qtutor.kvcache import KIVILayer, greedy_agreement, nll_by_context, position_nll, quantized_cache
    from qtutor.model import load_model

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, tok = load_model(device=a.device)
    windows = eval_windows(tok, EvalConfig(ctx=a.ctx, n_windows=a.windows)).to(a.device)
    edges = [0] + [e for e in (512, 1024, 2048, 4096, 8192, 16384) if e < a.ctx] + [a.ctx]
    prompts = []
    for p in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        prompts.append(ids.to(a.device))
    # long prompts: WikiText test text after the perplexity windows, so that the cache holds far more than the
    # residual window when generation starts (a short chat prompt never leaves it)
    from qtutor.data import tokenize_corpus
    text = tokenize_corpus(tok, "eval")
    start = a.windows * a.ctx
    long_prompts = [text[start + i * a.long_prompt: start + (i + 1) * a.long_prompt][None].to(a.device)
                    for i in range(len(PROMPTS))]

    def make(setting):
        if setting == "float":
            return None
        if setting.startswith("quanto_int"):  # the peer: transformers' QuantizedCache on optimum-quanto
            from transformers import QuantizedCache

            return QuantizedCache(backend="quanto", config=model.config, nbits=int(setting[len("quanto_int"):]),
                                  axis_key=0, axis_value=0, q_group_size=32, residual_length=128)
        if setting == "int2_no_residual":
            return quantized_cache(model, "int2", residual=0)
        if setting == "int2_keys_per_token":
            return quantized_cache(model, "int2", keys_per_token=True)
        return quantized_cache(model, setting)

    if a.held_only:
        rows = []
        for setting in a.settings.split(","):
            cache = make(setting)
            cache = DynamicCache() if cache is None else cache
            position_nll(model, windows[:1], cache, chunk=a.chunk)
            rows.append({"setting": setting, "tokens": a.ctx, "bytes_held": held_bytes(cache)})
            print(f"{setting:14s} {rows[-1]['bytes_held'] / 2**20:8.2f} MiB after {a.ctx} tokens", flush=True)
        _write(a, {"what": "bytes each KV cache holds for SmolLM2-135M-Instruct after one window of WikiText-2 "
                           "test, counted by held_bytes (every tensor a cache layer holds; optimum-quanto's packed "
                           "tensors by the plain tensors inside them)",
                   **_provenance(a, transformers), "protocol": {"ctx": a.ctx, "chunk": a.chunk}, "rows": rows})
        return

    refs = [None] * len(prompts)
    long_refs = [None] * len(long_prompts)
    rows = []
    for setting in a.settings.split(","):
        t0 = time.time()
        nll, held = [], None
        for w in windows:
            cache = make(setting)
            cache = DynamicCache() if cache is None else cache
            nll.append(position_nll(model, w[None], cache, chunk=a.chunk).cpu())
            held = held_bytes(cache) if held is None else held
        nll = torch.cat(nll)
        agree = []
        for i, p in enumerate(prompts):
            if setting == "float":
                r = greedy_agreement(model, p, DynamicCache(), n_new=a.n_new, reference=None)
                refs[i] = r["reference"]
            else:
                r = greedy_agreement(model, p, make(setting), n_new=a.n_new, reference=refs[i])
            agree.append({"same_prefix": r["same_prefix"], "agreement": r["agreement"]})
        agree_long = []
        for i, p in enumerate(long_prompts):
            r = greedy_agreement(model, p, make(setting) or DynamicCache(), n_new=a.n_new, reference=long_refs[i])
            long_refs[i] = r["reference"]
            agree_long.append({"same_prefix": r["same_prefix"], "agreement": r["agreement"]})
        row = {"setting": setting, "perplexity": math.exp(float(nll.mean())),
               "perplexity_by_position": nll_by_context(nll, edges), "bytes_held_at_ctx": held,
               "greedy": agree, "greedy_long_prompt": agree_long, "seconds": time.time() - t0}
        rows.append(row)
        print(f"{setting:22s} ppl {row['perplexity']:.3f}  {row['perplexity_by_position']}  "
              f"held {held / 2**20:.1f} MiB  greedy {[g['same_prefix'] for g in agree]} long {[g['same_prefix'] for g in agree_long]}  {row['seconds']:.0f}s",
              flush=True)
    result = {
        "what": "SmolLM2-135M-Instruct (dequantized Q4_1) with quantized KV caches, WikiText-2 test",
        **_provenance(a, transformers),
        "peer": "quanto_int4 / quanto_int2: transformers' QuantizedCache(backend='quanto', nbits, axis_key=0, "
                "axis_value=0, q_group_size=32, residual_length=128) — transformers' defaults but groups of 32 as "
                "KIVI's; it re-quantizes the whole cache each time the residual fills",
        "protocol": {"ctx": a.ctx, "windows": a.windows, "chunk": a.chunk, "n_new": a.n_new, "edges": edges,
                     "long_prompt_tokens": a.long_prompt, "long_prompts_start_at_token": start,
                     "kivi_defaults": {"group_size": KIVILayer().group_size, "residual": KIVILayer().residual}},
        "rows": rows,
    }
    _write(a, result)


def held_bytes(cache) -> int:
    """Bytes of every tensor the cache's layers hold, a tensor referenced twice counted once.

    qtutor's layers and transformers' float layers are what ``cache_nbytes`` counts; a layer of another kind (the
    peer's ``QuantizedCache`` on optimum-quanto) is walked attribute by attribute, and a tensor subclass (quanto's
    packed ``QTensor``) is counted by the plain tensors inside it (``__tensor_flatten__``).
    """
    from qtutor.kvcache import cache_nbytes

    if all(hasattr(layer, "nbytes") or type(layer).__name__ == "DynamicLayer" for layer in cache.layers):
        return cache_nbytes(cache)
    seen, total = set(), 0

    def count(t):
        nonlocal total
        if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            for n in names:
                count(getattr(t, n))
        elif isinstance(t, torch.Tensor) and t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()

    for layer in cache.layers:
        for v in vars(layer).values():
            if isinstance(v, torch.Tensor):
                count(v)
    return total


def _provenance(a, transformers) -> dict:
    return {"command": "python " + " ".join(sys.argv),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else _cpu_name(),
            "host": platform.node(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "optimum-quanto": _version("optimum-quanto"), "python": platform.python_version()}}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write(a, result: dict) -> None:
    from pathlib import Path
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print("wrote", a.out)


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
