"""qtutor's weighted GGUF encoders vs llama.cpp's ``quantize_<type>(…, quant_weights)``, byte for byte, on SmolLM2.

Every decoder linear of SmolLM2-135M whose row length splits into the type's blocks
(the 32-block types: all 210; the k-quants: the 30 ``ffn_down``, rows of 1536) is quantized
by ``qtutor.gguf.quantize_weighted`` and by llama.cpp's ``ggml-quants.c`` (llama-cpp-python
0.3.36's vendored copy, compiled by ``tests/gguf/conftest.py``'s fixture code with
``-O2 -ffp-contract=off``) with the same importance matrix (``compute_imatrix`` on 32 x 512
WikiText-2 train tokens, seed 0); the blocks whose bytes differ are counted.

    .venv/bin/python benchmarks/imatrix_byte_comparison.py [TYPE ...]
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gguf"))
from conftest import CFLAGS, LlamaCppReference, _build, _sdist  # noqa: E402

from qtutor.data import calibration_samples  # noqa: E402
from qtutor.gguf.file_types import block_size  # noqa: E402
from qtutor.gguf.imatrix import compute_imatrix, gguf_name  # noqa: E402
from qtutor.gguf.weighted import WEIGHTED_TYPES, quantize_weighted  # noqa: E402
from qtutor.model import decoder_linears, load_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "imatrix_byte_comparison.json"


def main(types: list[str]) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model()
    ref = LlamaCppReference(_build(_sdist()))
    imatrix = compute_imatrix(model, calibration_samples(tokenizer, n_samples=32, seq_len=512, seed=0))
    results, start = {}, time.time()
    for t in types:
        blocks = differ = tensors = 0
        for name, lin in decoder_linears(model).items():
            w = lin.weight.detach().float().numpy()  # (out_features, in_features): rows as GGUF stores them, up to q/k's row order
            if w.shape[1] % block_size(t):
                continue
            qw = imatrix.importance(gguf_name(name))
            size = ref.block_size(t)
            ours = quantize_weighted(w, qw, t).reshape(-1, size)
            theirs = ref.quantize_weighted(w, qw, t).reshape(-1, size)
            blocks += len(ours)
            differ += int((ours != theirs).any(axis=1).sum())
            tensors += 1
        results[t] = {"tensors": tensors, "blocks": blocks, "differing_blocks": differ}
        print(t, results[t], f"{time.time() - start:.0f}s", flush=True)
        _write(types, results, start)


def _write(types: list[str], results: dict, start: float) -> None:
    """After each type, so that an interrupted run keeps what it compared."""
    OUT.write_text(json.dumps({
        "what": "qtutor.gguf.quantize_weighted vs llama.cpp's quantize_<type>(src, dst, nrow, n_per_row, quant_weights), "
                "byte for byte (the llama-quantize --imatrix path)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {platform.machine()} CPU, {platform.system()}",
        "command": ".venv/bin/python benchmarks/imatrix_byte_comparison.py " + " ".join(types),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "llama_cpp": "ggml/src/ggml-quants.c of the llama-cpp-python 0.3.36 source distribution, built by "
                     f"tests/gguf/conftest.py with cc {' '.join(CFLAGS)} and tests/gguf/harness/kquant_ref.c",
        "data": "every decoder linear of SmolLM2-135M-Instruct (dequantized Q4_1 cache) whose row length splits into the "
                "type's blocks; importance matrix from 32 x 512 WikiText-2 train tokens (calibration_samples, seed 0)",
        "unit": "blocks (32 weights for Q4_0..Q8_0, 256 for the k-quants) whose bytes differ",
        "results": results,
        "seconds": round(time.time() - start),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["Q4_K", "Q6_K", "Q4_0", "Q4_1", "Q5_K", "Q3_K", "Q2_K", "Q5_0", "Q5_1", "Q8_0"])
