"""``qtutor quantize`` and ``qtutor eval``: the course's methods on any local Llama-family model, from a shell.

``qtutor quantize MODEL OUT --method rtn|gptq|awq [--bits --group-size --format]`` writes a checkpoint folder in
the GPTQ, AWQ or compressed-tensors layout (:func:`qtutor.formats.save_quantized`, the tokenizer beside it);
``--method nf4`` writes NF4 in bitsandbytes' serialization, which transformers loads with bitsandbytes
(:func:`qtutor.formats.bnb4.save_nf4`);
``qtutor quantize MODEL OUT.gguf --gguf Q4_K_M`` writes a GGUF with llama.cpp's per-tensor types
(:func:`qtutor.gguf.write_gguf`). ``--dry-run`` prints the size it would write and the bits per weight, and
writes nothing. ``MODEL`` is ``smollm2`` (the course model) or a Hugging Face folder with ``config.json``.

``qtutor eval MODEL [--reference REF]`` scores a model — the course model, a float folder, a checkpoint written by
``qtutor quantize`` or a ``.gguf`` — with the course's protocol (:mod:`qtutor.eval`: WikiText-2 test windows, no
BOS): perplexity, and with a reference, KL(p_ref ‖ p_model) and top-1 agreement.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["add_parsers", "run_quantize", "run_eval", "estimate_size", "UsageError"]

METHODS = ("rtn", "gptq", "awq", "nf4")
_LLAMA_FAMILY = ("llama", "mistral")
_DEFAULT_FORMAT = {"rtn": "gptq", "gptq": "gptq", "awq": "awq"}


class UsageError(ValueError):
    """A bad command-line value: the message names the argument, the value and what is allowed."""


# the choices, spelled out so that building the parser imports no torch (a test keeps them equal to the
# package's FORMATS, FILE_TYPES and Corpus)
FORMATS = ("gptq", "gptq_v2", "awq", "compressed-tensors")
FILE_TYPES = ("Q8_0", "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K")
CORPORA = ("wikitext", "shakespeare", "code")


def add_parsers(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a Llama-family model (the course model or a local folder) and write "
                                        "a GPTQ / AWQ / compressed-tensors checkpoint or a GGUF")
    q.add_argument("model", help="'smollm2' (the course model) or a Hugging Face folder with config.json")
    q.add_argument("out", type=Path, help="the checkpoint folder to write (replaced as a whole), or a .gguf file")
    how = q.add_mutually_exclusive_group(required=True)
    how.add_argument("--method", choices=METHODS, help="weight-only method (writes a checkpoint folder)")
    how.add_argument("--gguf", choices=FILE_TYPES, metavar="TYPE",
                     help=f"a llama.cpp file type ({', '.join(FILE_TYPES)}); OUT must end in .gguf")
    q.add_argument("--tensor-type", action="append", default=[], metavar="NAME=TYPE",
                   help="with --gguf: this GGUF tensor in this type (repeatable), as llama-quantize --tensor-type, "
                        "e.g. blk.0.attn_v.weight=Q8_0; the others follow --gguf's rules")
    q.add_argument("--bits", type=int, default=4, help="code bits for --method (default 4; nf4: 4 only)")
    q.add_argument("--group-size", type=int, default=None,
                   help="columns per scale; 0: one scale per row (default 128); nf4: weights per absmax block, a "
                        "power of two from 32 to 4096 (default 64, as bitsandbytes)")
    q.add_argument("--format", choices=FORMATS, help="checkpoint layout (default: gptq for rtn and gptq, awq for awq; "
                                                     "nf4 always writes bitsandbytes' layout)")
    q.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="rtn and gptq: a symmetric grid (no zero-points); default: symmetric for compressed-tensors "
                        "(the form transformers' compressed-tensors loader reads), asymmetric otherwise")
    q.add_argument("--calib", choices=CORPORA, default="wikitext",
                   help="calibration corpus for gptq and awq (default wikitext)")
    q.add_argument("--n-calib", type=int, default=128, help="calibration windows (default 128)")
    q.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window (default 512)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="cpu", help="where to quantize: cpu or cuda")
    q.add_argument("--nproc", type=int, default=1,
                   help="GPTQ over N processes with torch.distributed (gloo on cpu, NCCL on cuda: one GPU each); "
                        "under torchrun --nproc-per-node N -m qtutor quantize … the launcher's ranks are used instead")
    q.add_argument("--dry-run", action="store_true", help="print the size and bits per weight; write nothing")

    r = sub.add_parser("recommend", help="ranked quantization options for a model and a machine, each naming the "
                                         "measurement it rests on")
    r.add_argument("model", help="a preset (llama-3-8b, llama-3-70b, smollm2-135m) or a folder with config.json")
    r.add_argument("--memory", type=float, required=True, help="GB of GPU memory (or of RAM with --gpu none)")
    r.add_argument("--gpu", default="hopper", choices=("hopper", "ada", "ampere", "none"))
    r.add_argument("--priority", default="latency", choices=("latency", "throughput"))
    r.add_argument("--quality-critical", action="store_true", help="rank by measured quality first")
    r.add_argument("--context", type=int, default=4096, help="tokens of KV cache to hold (default 4096)")
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--top", type=int, default=3, help="how many options to print (default 3)")

    e = sub.add_parser("eval", help="perplexity (and KL / top-1 against a reference) with the course's protocol")
    e.add_argument("model", help="'smollm2', a float folder, a checkpoint written by qtutor quantize, or a .gguf")
    e.add_argument("--reference", help="a float model to compare with (same forms as MODEL): adds KL and top-1")
    e.add_argument("--windows", type=int, default=8, help="WikiText-2 test windows (default 8; 0: all)")
    e.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", type=Path, help="also write the result to this file")


# --------------------------------------------------------------------------------------------------- loading

def _load(spec: str, device: str):
    """(model, tokenizer) for 'smollm2', a float or qtutor-checkpoint folder, or a .gguf."""
    from .model import load_model

    if spec.lower() in ("smollm2", "course"):
        return load_model(device=device)
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"MODEL={spec!r}: no such .gguf file")
        return load_model(path, device=device)
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise UsageError(f"MODEL={spec!r}: allowed are 'smollm2', a Hugging Face folder with config.json, "
                         "or a .gguf file")
    try:
        raw = json.loads((path / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"MODEL={spec!r}: config.json is not valid JSON ({e})") from None
    if raw.get("model_type") not in _LLAMA_FAMILY:
        raise UsageError(f"MODEL={spec!r}: model_type {raw.get('model_type')!r} is not supported; allowed: "
                         f"{', '.join(_LLAMA_FAMILY)} (Llama-family decoder blocks)")
    if "quantization_config" in raw:
        from transformers import AutoTokenizer

        from .formats.checkpoint import load_quantized

        return load_quantized(path, device=device).eval(), AutoTokenizer.from_pretrained(path)
    return load_model(path, device=device)


def _check_args(args) -> None:
    args.tensor_types = {}
    if args.tensor_type and not args.gguf:
        raise UsageError("--tensor-type is for --gguf files; --method checkpoints take one scheme (--bits, "
                         "--group-size)")
    if args.group_size is None:
        args.group_size = 64 if args.method == "nf4" else 128
    if args.method == "nf4":
        if args.bits != 4:
            raise UsageError(f"--bits={args.bits}: NF4 codes are 4 bits; allowed 4 with --method nf4")
        if args.group_size not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise UsageError(f"--group-size={args.group_size}: NF4's absmax block must be a power of two from 32 "
                             "to 4096 (default 64)")
        if args.format:
            raise UsageError(f"--format={args.format}: --method nf4 writes bitsandbytes' layout, the one "
                             "transformers loads NF4 from; --format is for rtn, gptq and awq")
        if args.symmetric is not None:
            raise UsageError("--symmetric: NF4's levels are fixed (normal quantiles, absmax per block); allowed "
                             "with --method rtn or gptq")
    if not isinstance(args.nproc, int) or args.nproc < 1:
        raise UsageError(f"--nproc={args.nproc}: at least 1 process")
    if args.nproc > 1 and not args.method:
        raise UsageError(f"--nproc={args.nproc}: several processes are for --method gptq")
    if args.method:
        if not isinstance(args.bits, int) or not 2 <= args.bits <= 8:
            raise UsageError(f"--bits={args.bits}: allowed 2 to 8")
        if args.group_size < 0:
            raise UsageError(f"--group-size={args.group_size}: a positive number of columns, or 0 for one per row")
        if args.out.suffix == ".gguf":
            raise UsageError(f"OUT={args.out}: --method writes a checkpoint folder; use --gguf TYPE for a .gguf")
        if args.nproc != 1 and args.method != "gptq":
            raise UsageError(f"--nproc={args.nproc}: several processes are for --method gptq")
        if args.method in ("gptq", "awq"):
            if args.n_calib < 1:
                raise UsageError(f"--n-calib={args.n_calib}: at least 1 calibration window")
            if args.seq_len < 2:
                raise UsageError(f"--seq-len={args.seq_len}: at least 2 tokens")
    else:
        if args.out.suffix != ".gguf":
            raise UsageError(f"OUT={args.out}: a --gguf file must end in .gguf")
        for item in args.tensor_type:
            name, eq, t = item.partition("=")
            if not eq or not name or not t:
                raise UsageError(f"--tensor-type={item!r}: write NAME=TYPE, e.g. blk.0.attn_v.weight=Q8_0")
            args.tensor_types[name] = t
        if args.format:
            raise UsageError("--format is for --method checkpoints; a GGUF's tensor types follow --gguf")
    if args.out.exists() and args.out.is_dir() and args.gguf:
        raise UsageError(f"OUT={args.out} is a folder; --gguf writes a file")


# --------------------------------------------------------------------------------------------------- sizes

def estimate_size(model, method: str | None, bits: int, group_size: int | None, fmt: str | None,
                  gguf_type: str | None, tensor_types: dict[str, str] | None = None) -> dict:
    """Bytes of what ``qtutor quantize`` writes (tensor data; file headers add a few kB) and bits per weight of the
    decoder linears. Checkpoints: codes, an fp16 scale and a packed zero-point per group; every other tensor in
    its own dtype (the tied head once). GGUF: each tensor in the type llama.cpp's rules choose."""
    from .model import decoder_linears

    if gguf_type:
        import gguf

        from .gguf.file_types import choose_tensor_type
        from .gguf.io import gguf_tensors_from_hf

        tensors = gguf_tensors_from_hf(model)
        cfg = model.config
        n_gqa = cfg.num_attention_heads // cfg.num_key_value_heads
        tied = "output.weight" not in tensors
        total, lin_bits, lin_n = 0, 0.0, 0
        for name, a in tensors.items():
            t = (tensor_types or {}).get(name) or choose_tensor_type(name, tuple(reversed(a.shape)), gguf_type,
                                                                      cfg.num_hidden_layers, n_gqa, tied)
            if t in ("F32", "F16"):
                nbytes = a.size * (4 if t == "F32" else 2)
            else:
                block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, t)]
                nbytes = a.size // block * size
            total += nbytes
            if name.startswith("blk.") and a.ndim == 2:
                lin_bits, lin_n = lin_bits + 8 * nbytes, lin_n + a.size
        return {"bytes": total, "linear_bits_per_weight": lin_bits / lin_n, "what": f"GGUF {gguf_type}"}
    linears = decoder_linears(model)
    gs = group_size or None
    if method == "nf4":
        from .methods.nf4 import NF4Config, nf4_bits_per_weight

        lin_bytes = sum(m.weight.numel() * nf4_bits_per_weight(m.weight.numel(), NF4Config(blocksize=gs)) / 8
                        for m in linears.values())
        fmt, what = None, f"NF4 block {gs} (double-quantized absmax), bitsandbytes layout"
    else:
        lin_bytes = _packed_bytes(linears, bits, gs)
        what = f"{method.upper()} W{bits} " + (f"g{gs}" if gs else "per-row") + f", {fmt} layout"
    skip = {id(m.weight) for m in linears.values()}
    seen: set[int] = set()
    other = 0
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) in skip or id(p) in seen:
            continue
        seen.add(id(p))
        other += p.numel() * p.element_size() if p.is_floating_point() else 0
    n = sum(m.weight.numel() for m in linears.values())
    return {"bytes": int(lin_bytes + other), "linear_bits_per_weight": 8 * lin_bytes / n, "what": what}


def _packed_bytes(linears, bits: int, gs: int | None) -> float:
    lin_bytes = 0.0
    for m in linears.values():
        groups = -(-m.in_features // gs) if gs else 1
        lin_bytes += m.out_features * (m.in_features * bits + groups * (16 + bits)) / 8
    return lin_bytes


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


# --------------------------------------------------------------------------------------------------- commands

def run_quantize(args) -> int:
    from .data import Corpus, calibration_samples

    _check_args(args)
    if args.method:  # refused before any work, not after a GPTQ run
        from .formats.checkpoint import check_replaceable

        try:
            check_replaceable(args.out)
        except ValueError as e:
            raise UsageError(f"OUT={e}") from None
    cfg_file = Path(args.model) / "config.json"
    if cfg_file.is_file() and "quantization_config" in cfg_file.read_text():
        raise UsageError(f"MODEL={args.model!r} is already quantized (its config.json has a quantization_config); "
                         "quantize a float model")
    model, tok = _load(args.model, args.device)
    fmt = None if args.gguf or args.method == "nf4" else (args.format or _DEFAULT_FORMAT[args.method])
    gs = args.group_size or None
    if args.method and args.method != "nf4":  # the grid's own checks (bits, group size against every layer) first
        from .model import decoder_linears

        for name, m in decoder_linears(model).items():
            if gs and m.in_features % gs:
                raise UsageError(f"--group-size={args.group_size}: {name} has {m.in_features} input columns, "
                                 "not a multiple; allowed: a divisor of every layer's in_features, or 0")
    if args.tensor_types:  # checked against the model before any work (names, types, block sizes)
        from .gguf.io import _check_types, gguf_tensors_from_hf

        try:
            _check_types(args.tensor_types, gguf_tensors_from_hf(model))
        except ValueError as e:
            raise UsageError(f"--tensor-type: {e}") from None
    size = estimate_size(model, args.method, args.bits, gs, fmt, args.gguf, args.tensor_types)
    print(f"{size['what']}: {_fmt_bytes(size['bytes'])} of tensors, decoder linears at "
          f"{size['linear_bits_per_weight']:.3f} bits per weight", flush=True)
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    if args.gguf:
        from .gguf import write_gguf

        args.out.parent.mkdir(parents=True, exist_ok=True)
        types = write_gguf(model, args.out, args.gguf, tokenizer=tok, types=args.tensor_types or None)
        counts: dict[str, int] = {}
        for t in types.values():
            counts[t] = counts.get(t, 0) + 1
        print(f"wrote {args.out} ({_fmt_bytes(args.out.stat().st_size)}): "
              + ", ".join(f"{n} × {t}" for t, n in sorted(counts.items())))
        return 0
    if args.method == "nf4":
        from .formats.bnb4 import save_nf4
        from .methods.nf4 import NF4Config
        from .model import decoder_linears
        from .nn import convert

        print(f"quantizing {len(decoder_linears(model))} decoder linears to NF4 (bitsandbytes' reference "
              "quantizer, on the CPU)", flush=True)
        save_nf4(convert(model, NF4Config(blocksize=gs)), args.out, tokenizer=tok)
        return _wrote(args)
    from .formats.checkpoint import save_quantized
    from .methods.awq import AWQConfig
    from .methods.gptq import GPTQConfig
    from .model import decoder_linears
    from .primitives import rtn_grid_quantize

    symmetric = (fmt == "compressed-tensors") if args.symmetric is None else args.symmetric
    if args.method == "awq" and symmetric:
        if args.symmetric:
            raise UsageError("--symmetric: AWQ's grid is asymmetric (min-max with a zero-point); allowed with "
                             "--method rtn or gptq")
        symmetric = False
        if fmt == "compressed-tensors":
            print("note: AWQ writes zero-points; transformers' compressed-tensors loader reads the symmetric form "
                  "only, so this folder loads in qtutor (qtutor eval) but not in transformers", flush=True)
    if args.method == "rtn":
        import torch

        results = {}
        with torch.no_grad():
            for name, lin in decoder_linears(model).items():
                results[name] = rtn_grid_quantize(lin.weight, args.bits, gs, symmetric).to("cpu")
    else:
        calib = calibration_samples(tok, Corpus[args.calib.upper()], n_samples=args.n_calib, seq_len=args.seq_len,
                                    seed=args.seed)
        if args.method == "gptq" and (args.nproc > 1 or _under_torchrun()):
            return _gptq_distributed(args, GPTQConfig(args.bits, gs, symmetric=symmetric), fmt)
        if args.method == "gptq":
            from .pipeline.gptq import gptq_quantize_model

            results = gptq_quantize_model(model, calib, GPTQConfig(args.bits, gs, symmetric=symmetric), progress=True)
        else:
            from .pipeline.awq import awq_quantize_model

            results, _ = awq_quantize_model(model, calib, AWQConfig(args.bits, gs), progress=True)
    save_quantized(model, results, args.out, fmt, tokenizer=tok)
    return _wrote(args)


def _under_torchrun() -> bool:
    import os

    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def _gptq_distributed(args, config, fmt: str) -> int:
    """GPTQ over ``args.nproc`` spawned processes, or over torchrun's ranks; rank 0 writes the checkpoint."""
    import os
    import tempfile

    if _under_torchrun():
        _gptq_rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", args, config, fmt)
        return _wrote(args) if int(os.environ["RANK"]) == 0 else 0
    import torch
    import torch.multiprocessing as mp

    if args.device.startswith("cuda") and torch.cuda.device_count() < args.nproc:
        raise UsageError(f"--nproc={args.nproc}: only {torch.cuda.device_count()} GPUs; one process per GPU")
    print(f"GPTQ over {args.nproc} processes ({'NCCL' if args.device.startswith('cuda') else 'gloo'})", flush=True)
    with tempfile.TemporaryDirectory(prefix="qtutor_dist_") as tmp:
        mp.spawn(_gptq_rank, args=(args.nproc, f"file://{tmp}/init", args, config, fmt), nprocs=args.nproc, join=True)
    return _wrote(args)


def _gptq_rank(rank: int, world: int, init_method: str, args, config, fmt: str) -> None:
    """One rank: load the model and the calibration windows (the same on every rank), quantize, rank 0 saves."""
    import os

    import torch
    import torch.distributed as dist

    from .data import Corpus, calibration_samples
    from .formats.checkpoint import save_quantized
    from .pipeline.distributed import gptq_quantize_model_distributed

    cuda = args.device.startswith("cuda")
    device = f"cuda:{rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        model, tok = _load(args.model, device)
        calib = calibration_samples(tok, Corpus[args.calib.upper()], n_samples=args.n_calib, seq_len=args.seq_len,
                                    seed=args.seed)
        # the single process batches by 8: the same batches (hence the same result) whenever every rank gets one
        batch = 8 if args.n_calib >= 8 * world else max(1, args.n_calib // world)
        results = gptq_quantize_model_distributed(model, calib, config, batch_size=batch)
        if rank == 0:
            save_quantized(model, results, args.out, fmt, tokenizer=tok)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _wrote(args) -> int:
    written = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out}/ ({_fmt_bytes((args.out / 'model.safetensors').stat().st_size)} model.safetensors, "
          f"{_fmt_bytes(written)} in all, tokenizer included); score it with: qtutor eval {args.out} --reference "
          f"{args.model}")
    return 0


def run_eval(args) -> int:
    import torch

    from .eval import EvalConfig, logit_agreement, perplexity, reference_logits

    if args.windows < 0:
        raise UsageError(f"--windows={args.windows}: a positive number, or 0 for every window")
    if args.ctx < 2:
        raise UsageError(f"--ctx={args.ctx}: at least 2 tokens")
    cfg = EvalConfig(ctx=args.ctx, n_windows=args.windows or None, batch_size=1)
    model, tok = _load(args.model, args.device)
    result: dict[str, object] = {"model": args.model, "windows": args.windows or "all", "ctx": args.ctx,
                                 "corpus": "WikiText-2 test, no BOS"}
    with torch.no_grad():
        if args.reference:
            ref_model, ref_tok = _load(args.reference, args.device)
            if ref_tok.get_vocab() != tok.get_vocab():
                raise UsageError(f"--reference={args.reference!r}: its tokenizer differs from MODEL's; KL needs the "
                                 "same vocabulary")
            ref = reference_logits(ref_model, ref_tok, cfg)
            del ref_model
            result.update(logit_agreement(model, ref, with_perplexity=True))
            result["reference"] = args.reference
        else:
            result["perplexity"] = perplexity(model, tok, cfg)
    if not math.isfinite(float(result["perplexity"])):
        print(f"warning: the perplexity is {result['perplexity']}: the model's outputs overflow", file=sys.stderr)
    line = f"{args.model}: perplexity {float(result['perplexity']):.3f}"
    if "kl" in result:
        line += f", KL {float(result['kl']):.4f} nats/token, top-1 {float(result['top1']):.2%} vs {args.reference}"
    print(line + f" ({cfg.n_windows or 'all'} windows of {args.ctx} WikiText-2 test tokens)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def run_recommend(args) -> int:
    from .recommend import PRESETS, recommend, summary

    model = args.model
    if args.model.lower() not in PRESETS:
        cfg = Path(args.model) / "config.json"
        if not cfg.is_file():
            raise UsageError(f"MODEL={args.model!r}: allowed presets {', '.join(PRESETS)}, or a folder with config.json")
        model = json.loads(cfg.read_text())
    name = f"<{args.model} folder>" if isinstance(model, str) else args.model
    opts = recommend(model, args.memory, args.gpu, args.priority, args.quality_critical, args.context, args.batch,
                     name=name)
    print(summary(opts, args.top))
    print("quality: KL to float measured on SmolLM2-135M (a small model loses more than a large one at the same "
          "bits; the figures rank the options); sizes: exact bits per weight for this model's shapes")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "recommend":
            return run_recommend(args)
        return run_quantize(args) if args.command == "quantize" else run_eval(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
