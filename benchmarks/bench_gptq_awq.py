"""Wall time of qtutor's GPTQ and AWQ pipelines on a Llama-3-8B-shaped model (random weights).

    python benchmarks/bench_gptq_awq.py --method gptq --out benchmarks/results/gptq_awq_8b_<gpu>.json

Shapes of Llama-3-8B (hidden 4096, MLP 14336, 32 heads / 8 KV heads, 32 blocks,
vocabulary 128256), fp16 weights drawn by transformers' initialiser, calibration
of 128 random windows × 2048 tokens (the values do not change the work done).
The whole model stays on the GPU (16 GB); each block is quantized there. Appends
to the JSON file, so the GPTQ and AWQ runs can be separate commands.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from qtutor.config import AWQConfig, GPTQConfig
from qtutor.pipeline import awq_quantize_model, gptq_quantize_model

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["gptq", "awq"], required=True)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": args.layers})
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
    build_s = time.perf_counter() - t0
    ids = torch.randint(0, config.vocab_size, (args.samples, args.seq_len))
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if args.method == "gptq":
        cfg = GPTQConfig(n_bits=4, group_size=128)
        gptq_quantize_model(model, ids, cfg, device="cuda", batch_size=args.batch_size)
    else:
        cfg = AWQConfig(n_bits=4, group_size=128)
        awq_quantize_model(model, ids, cfg, device="cuda", batch_size=args.batch_size)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    record = {
        "what": f"{args.method.upper()} over a Llama-3-8B-shaped model (random fp16 weights)",
        "command": f"python benchmarks/bench_gptq_awq.py --method {args.method} --layers {args.layers} "
                   f"--samples {args.samples} --seq-len {args.seq_len} --batch-size {args.batch_size}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "shape": {**LLAMA3_8B, "num_hidden_layers": args.layers},
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "calibration_tokens": [args.samples, args.seq_len],
        "model_build_s": round(build_s, 1),
        "wall_s": round(wall, 1),
        "seconds_per_block": round(wall / args.layers, 2),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "target_s": 600,
    }
    print(json.dumps(record, indent=2))
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs + [record], indent=2) + "\n")


if __name__ == "__main__":
    main()
