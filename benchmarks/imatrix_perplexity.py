"""Perplexity and KL of SmolLM2-135M quantized with and without llama.cpp's importance matrix.

For each type: every decoder linear whose row length splits into the type's blocks is
encoded (qtutor's byte-identical ports of ggml-quants.c) and decoded; the others stay
float. SmolLM2's rows are 576 or 1536 long, so the k-quants (256-blocks) reach only the
30 ``ffn_down`` tensors, the 32-block types all 210. The embedding and norms stay float.
The importance matrix: 32 x 512 WikiText-2 train tokens (``calibration_samples``, seed 0).
Evaluation: the course's FAST windows (8 x 512 test tokens) and KL_FAST for KL.
Results are written after each type, so an interrupted run keeps what it measured.

    QTUTOR_THREADS=2 .venv/bin/python benchmarks/imatrix_perplexity.py
    QTUTOR_THREADS=2 .venv/bin/python benchmarks/imatrix_perplexity.py --types Q5_0,Q5_1 --append

``--append`` adds the named types to the existing record; each appended type carries its own
``run`` (date, commit, command, its own float perplexity), checked within 1e-4 of the record's.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qtutor.data import calibration_samples
from qtutor.eval import FAST, KL_FAST, logit_agreement, perplexity, reference_logits
from qtutor.gguf.file_types import block_size
from qtutor.gguf.imatrix import compute_imatrix, gguf_name
from qtutor.gguf.io import dequantize_tensor, quantize_tensor
from qtutor.gguf.weighted import quantize_weighted
from qtutor.model import decoder_linears, load_model

OUT = Path(__file__).parent / "results" / "imatrix_perplexity.json"
TYPES = ("Q4_K", "Q4_1", "Q6_K", "Q4_0", "Q2_K", "Q3_K", "Q5_K", "Q5_0", "Q5_1")


def quantized_model(model, type_name: str, imatrix=None):
    """A copy of ``model`` whose fitting decoder linears are GGUF ``type_name`` round trips.

    Rows are quantized as the Hugging Face layout holds them: GGUF permutes q/k rows, and a
    row-wise quantizer commutes with a row permutation, so the decoded weights are the same.
    """
    out = copy.deepcopy(model)
    n = 0
    for name, lin in decoder_linears(out).items():
        w = lin.weight.detach().float().numpy()  # (out_features, in_features)
        if w.shape[1] % block_size(type_name):
            continue
        if imatrix is None:
            data = quantize_tensor(w, type_name)
        else:
            data = quantize_weighted(w, imatrix.importance(gguf_name(name)), type_name)
        lin.weight.data.copy_(torch.from_numpy(dequantize_tensor(data, type_name, w.shape[1])))
        n += 1
    return out, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated GGML types")
    ap.add_argument("--append", action="store_true", help="add the types to the existing record")
    args = ap.parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if bad:
        ap.error(f"--types: {bad} not among {list(TYPES)}")
    if args.append and not OUT.exists():
        ap.error(f"--append: no record at {OUT}")
    torch.manual_seed(0)
    model, tokenizer = load_model()
    start = time.time()
    imatrix = compute_imatrix(model, calibration_samples(tokenizer, n_samples=32, seq_len=512, seed=0))
    ref = reference_logits(model, tokenizer, KL_FAST)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    pins = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA",
                                                      "QTUTOR_THREADS") if k in os.environ)
    command = f"{pins} .venv/bin/python benchmarks/imatrix_perplexity.py " + " ".join(argv or sys.argv[1:])
    float_ppl = perplexity(model, tokenizer, FAST)
    if args.append:
        result = json.loads(OUT.read_text())
        # another CPU or thread count moves the float perplexity in the 5th-6th digit; more means another model
        if abs(result["float"]["perplexity"] - float_ppl) > 1e-4 * float_ppl:
            raise SystemExit(f"float perplexity {float_ppl} differs from the record's "
                             f"{result['float']['perplexity']}: the appended rows would not compare")
    else:
        result = None
    result = result or {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
        "date": now,
        "command": command.strip(),
        "commit": commit,
        "model": "SmolLM2-135M", "imatrix": "32 x 512 WikiText-2 train tokens (calibration_samples, seed 0)",
        "eval": "perplexity: FAST (8 x 512 WikiText-2 test tokens); kl, top1: KL_FAST vs the float model",
        "scope": "k-quants on the 30 ffn_down tensors (1536-long rows); 32-block types on all 210 decoder linears; "
                 "embedding and norms float",
        "float": {"perplexity": float_ppl},
        "types": {},
    }
    for t in types:
        row = {}
        if args.append:
            row["run"] = {"date": now, "commit": commit, "command": command.strip(), "float_perplexity": float_ppl,
                          "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), "
                                     f"{torch.get_num_threads()} threads"}
        for label, im in (("plain", None), ("imatrix", imatrix)):
            q, n = quantized_model(model, t, im)
            row[label] = {"perplexity": perplexity(q, tokenizer, FAST), **logit_agreement(q, ref)}
            row["tensors"] = n
            del q
        result["types"][t] = row
        if not args.append:
            result["seconds"] = round(time.time() - start)
        OUT.write_text(json.dumps(result, indent=1) + "\n")
        print(t, row, f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
