"""GPTQ on one GPU and on N GPUs (torch.distributed, NCCL) in one run: wall time, peak memory, equality.

    python benchmarks/gptq_distributed.py --gpus 2 --out benchmarks/results/gptq_distributed_h200x2.json

Llama-3-8B-shaped and Llama-3-70B-shaped decoder blocks (only ``--blocks`` of them, a 32000-token vocabulary),
fp16 weights drawn by transformers' initialiser from ``--seed`` — the same on every rank — and random
calibration ids (the values do not change the work). One GPU runs qtutor's single-process
``gptq_quantize_model``; N GPUs run ``gptq_quantize_model_distributed``, one spawned process per GPU. Both
quantize on the GPU with the same batches of ``--batch-size``; the N-GPU result is compared with the
one-GPU result layer by layer (codes, scales, zero-points).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHAPES = {
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8),
    "llama-3-70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8),
}


def build(shape: str, blocks: int, seed: int, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], num_hidden_layers=blocks, vocab_size=32000, max_position_embeddings=8192,
                         rope_theta=500000.0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()


def calibration(samples: int, seq_len: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 32000, (samples, seq_len), generator=torch.Generator().manual_seed(seed + 1))


def rank_main(rank: int, world: int, init: str, args, shape: str, out: str) -> None:
    from qtutor.config import GPTQConfig
    from qtutor.pipeline.distributed import gptq_quantize_model_distributed

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    try:
        model = build(shape, args.blocks, args.seed, f"cuda:{rank}")
        ids = calibration(args.samples, args.seq_len, args.seed)
        torch.cuda.reset_peak_memory_stats()
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = gptq_quantize_model_distributed(model, ids, GPTQConfig(4, 128), batch_size=args.batch_size)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30
        if rank == 0:
            torch.save({"wall_s": wall, "results": {n: vars(qw) for n, qw in results.items()}}, out)
        peaks = [None] * world
        dist.all_gather_object(peaks, peak)
        if rank == 0:
            with open(out + ".peaks", "w") as f:
                json.dump(peaks, f)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--shapes", default="llama-3-8b,llama-3-70b")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import transformers

    from qtutor.config import GPTQConfig
    from qtutor.pipeline.gptq import gptq_quantize_model

    rows = []
    for shape in args.shapes.split(","):
        model = build(shape, args.blocks, args.seed, "cuda:0")
        ids = calibration(args.samples, args.seq_len, args.seed)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        want = gptq_quantize_model(model, ids, GPTQConfig(4, 128), device="cuda:0", batch_size=args.batch_size,
                                   progress=False)
        torch.cuda.synchronize()
        one_wall, one_peak = time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30
        del model
        torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rank0.pt")
            mp.spawn(rank_main, args=(args.gpus, f"file://{tmp}/init", args, shape, out), nprocs=args.gpus, join=True)
            got = torch.load(out, weights_only=False)
            peaks = json.load(open(out + ".peaks"))
        equal = all(torch.equal(getattr(qw, f).cpu(), got["results"][n][f].cpu())
                    for n, qw in want.items() for f in ("q", "scale", "zero", "g_idx"))
        max_scale_diff = max(float((qw.scale.cpu().float() - got["results"][n]["scale"].cpu().float()).abs().max())
                             for n, qw in want.items())
        row = {"shape": shape, **SHAPES[shape], "blocks": args.blocks, "one_gpu_s": round(one_wall, 2),
               "n_gpu_s": round(got["wall_s"], 2), "gpus": args.gpus,
               "speedup": round(one_wall / got["wall_s"], 3),
               "scaling_efficiency": round(one_wall / got["wall_s"] / args.gpus, 3),
               "one_gpu_peak_gib": round(one_peak, 2), "n_gpu_peak_gib_per_rank": [round(p, 2) for p in peaks],
               "equal_to_one_gpu": equal, "max_abs_scale_difference": max_scale_diff}
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {
        "what": "GPTQ W4 g128 of Llama-3-8B- and 70B-shaped decoder blocks (random fp16 weights from a seed) on one GPU "
                "(gptq_quantize_model) and on N GPUs (gptq_quantize_model_distributed over NCCL, one process per GPU)",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{args.gpus} x {torch.cuda.get_device_name()}",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "nccl": str(torch.cuda.nccl.version()), "python": platform.python_version()},
        "settings": {"blocks": args.blocks, "calibration_tokens": [args.samples, args.seq_len],
                     "batch_size": args.batch_size, "seed": args.seed, "vocab_size": 32000},
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
