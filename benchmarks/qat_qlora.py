"""Training through quantization on a GPU (issue #16): whole-model QAT, forward-only vs backprop at equal wall
time, and QLoRA on qtutor's NF4 beside bitsandbytes ``Linear4bit`` + peft. Notebook 17 loads the JSON.

    python benchmarks/qat_qlora.py --device cuda --part qat --out $OUT/qat_h200.json
    python benchmarks/qat_qlora.py --device cuda --part zo --out $OUT/zo_h200.json
    python benchmarks/qat_qlora.py --device cuda --part qlora --out $OUT/qlora_h200.json

* ``qat``: W3 g64 (symmetric, one LSQ scale per 64 input columns) on every decoder linear of SmolLM2: RTN;
  block-wise QAT (:func:`qtutor.pipeline.qat.qat_blockwise_`, every block); whole-model QAT distilled from the
  float model (:func:`qtutor.pipeline.qat.qat_distill_`), from RTN and from the block-wise result. Perplexity,
  KL and top-1 on WikiText-2 test windows; the share of RTN's perplexity gap to float recovered; time and peak
  GPU memory of each.
* ``zo``: only the scales train (weights fixed on RTN's grid), the same distillation loss, for the same wall time:
  backprop (Adam) against forward-only MeZO (:func:`qtutor.methods.qat.zo_minimize` on the log-scales), with the
  peak GPU memory of each.
* ``qlora``: adapters (r 8, α 16, q_proj and v_proj) on the NF4 base (double quantization, bf16 compute),
  trained on Tiny Shakespeare with AdamW: qtutor's ``NF4Linear`` + ``LoRALinear`` and bitsandbytes' ``Linear4bit``
  + peft's LoRA, the same base (compared), the same initial adapters (copied), batches, steps and seed: loss
  curves, held-out loss, time per step, memory of base, adapters, optimizer states and activations; then the
  merge into NF4 (qtutor's ``merge_lora``, peft's ``merge_and_unload``) and its held-out loss.

float32 for the QAT parts (TF32 off); bf16 for QLoRA as QLoRA does.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from qtutor.course import setup_notebook
from qtutor.data import Corpus, calibration_samples
from qtutor.eval import EvalConfig, logit_agreement, reference_logits
from qtutor.model import decoder_blocks, load_model


def _mib(n: float) -> float:
    return round(n / 2**20, 2)


def _cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _reset_peak(device) -> None:
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device) -> float | None:
    return _mib(torch.cuda.max_memory_allocated()) if _cuda(device) else None


def _allocated(device) -> float | None:
    return _mib(torch.cuda.memory_allocated()) if _cuda(device) else None


def _sync(device) -> None:
    if _cuda(device):
        torch.cuda.synchronize()


def _score(model, ref, float_ppl=None, rtn_ppl=None) -> dict:
    s = logit_agreement(model, ref, batch_size=4, with_perplexity=True)
    if float_ppl is not None and rtn_ppl is not None:
        s["gap_recovered"] = (rtn_ppl - s["perplexity"]) / (rtn_ppl - float_ppl)
    return s


def _log(row) -> None:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "loss_curve"}, flush=True)


# --------------------------------------------------------------------------------------------------------- QAT

def part_qat(args, model, tok, ref) -> dict:
    from qtutor.pipeline.qat import QATConfig, qat_blockwise_, qat_distill_, rtn_group_

    dev = args.device
    train = calibration_samples(tok, Corpus.WIKITEXT, n_samples=args.train_windows, seq_len=512, seed=0)
    rows = {"float": _score(model, ref)}
    fppl = rows["float"]["perplexity"]
    _log({"row": "float", **rows["float"]})
    rtn = copy.deepcopy(model)
    rtn_group_(rtn, args.bits, args.group)
    rows["rtn"] = _score(rtn, ref)
    rppl = rows["rtn"]["perplexity"]
    rows["rtn"]["gap_recovered"] = 0.0
    _log({"row": "rtn", **rows["rtn"]})
    del rtn

    # block-wise: every block in turn against the float block's outputs
    bw = copy.deepcopy(model)
    _reset_peak(dev)
    _sync(dev)
    t = time.perf_counter()
    cfg_bw = QATConfig(n_bits=args.bits, group_size=args.group, steps=args.block_steps, lr=1e-4, scale_lr=1e-3,
                       batch_size=8)
    report = qat_blockwise_(bw, train[: args.block_windows], cfg_bw, progress=False)
    _sync(dev)
    rows["blockwise"] = {**_score(bw, ref, fppl, rppl), "seconds": time.perf_counter() - t, "peak_mib": _peak(dev),
                         "config": {**cfg_bw.__dict__, "windows": args.block_windows, "seq_len": 512},
                         "block_mse": [{k: v for k, v in r.items()} for r in report]}
    _log({"row": "blockwise", **{k: v for k, v in rows["blockwise"].items() if k != "block_mse"}})

    for k, pair in enumerate(args.lrs.split(",")):
        lr, scale_lr = (float(v) for v in pair.split(":"))
        cfg_d = QATConfig(n_bits=args.bits, group_size=args.group, steps=args.distill_steps, lr=lr,
                          scale_lr=scale_lr, batch_size=args.batch)
        starts = (("from_rtn", None), ("from_blockwise", bw)) if k == 0 else (("from_rtn", None),)
        for start_name, start in starts:
            name = f"distill_{start_name}_lr{lr:g}"
            student = copy.deepcopy(model if start is None else start)
            _reset_peak(dev)
            t = time.perf_counter()
            curve = qat_distill_(student, model, train, cfg_d, progress=False, seed=1, log_every=100)
            _sync(dev)
            seconds = time.perf_counter() - t
            rows[name] = {**_score(student, ref, fppl, rppl), "seconds": seconds, "peak_mib": _peak(dev),
                          "config": {**cfg_d.__dict__, "windows": args.train_windows, "seq_len": 512},
                          "train_kl_first": curve[0], "train_kl_last_20_mean": sum(curve[-20:]) / len(curve[-20:]),
                          "loss_curve": curve[:: max(1, len(curve) // 100)]}
            _log({"row": name, **rows[name]})
            del student
    return {"scheme": f"W{args.bits} g{args.group} symmetric, one LSQ scale per group, every decoder linear",
            "rows": rows}


# ---------------------------------------------------------------------------------------------- forward-only

def part_zo(args, model, tok, ref) -> dict:
    from contextlib import ExitStack

    from qtutor.methods.qat import zo_minimize
    from qtutor.pipeline.qat import lsq_quantized, rtn_group_

    dev = args.device
    train = calibration_samples(tok, Corpus.WIKITEXT, n_samples=args.train_windows, seq_len=512, seed=0).to(dev)
    rtn = copy.deepcopy(model)
    rtn_group_(rtn, args.bits, args.group)
    fppl = _score(model, ref)["perplexity"]
    rppl = _score(rtn, ref)["perplexity"]
    teacher = model
    out = {}
    runs = [("backprop_adam", args.zo_bp_lr)] + [("forward_only_mezo", float(v)) for v in args.zo_lrs.split(",")]
    for method, lr in runs:
        name = f"{method}_lr{lr:g}"
        student = copy.deepcopy(model)  # float weights, fixed; Q(W) with learnable scales starts as RTN
        for p in student.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(1)

        def batch():  # a batch and the teacher's log-probabilities on it
            idx = torch.randperm(train.shape[0], generator=g)[: args.batch].to(dev)
            with torch.no_grad():
                return train[idx], F.log_softmax(teacher(train[idx]).logits.float(), dim=-1)

        def kd(bt):
            b, target = bt
            logp = F.log_softmax(student(b).logits.float(), dim=-1)
            return F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()

        with ExitStack() as stack:
            scales = []
            for blk in decoder_blocks(student):
                scales += [q.scale for q in stack.enter_context(
                    lsq_quantized(blk, args.bits, args.group, bake=True)).values()]
            _reset_peak(dev)
            base_mib = _allocated(dev)
            steps, forwards, curve = 0, 0, []
            _sync(dev)
            t0 = time.perf_counter()
            if method == "backprop_adam":
                opt = torch.optim.Adam(scales, lr=lr)
                while time.perf_counter() - t0 < args.zo_seconds:
                    loss = kd(batch())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    curve.append(float(loss.detach()))
                    steps += 1
                    forwards += 1
            else:
                for s_ in scales:
                    s_.requires_grad_(False)
                logs = [s_.detach().log() for s_ in scales]
                state = {"calls": 0, "b": None}

                def loss_fn():
                    if state["calls"] % 2 == 0:  # the two evaluations of one step see the same batch
                        state["b"] = batch()
                    state["calls"] += 1
                    for s_, l_ in zip(scales, logs):
                        s_.copy_(l_.exp())
                    return kd(state["b"])

                chunk, diverged = 0, None
                while time.perf_counter() - t0 < args.zo_seconds and diverged is None:
                    saved = [l_.clone() for l_ in logs]
                    try:
                        curve += zo_minimize(loss_fn, logs, steps=10, lr=lr, eps=args.zo_eps, seed=chunk)
                    except ValueError as e:  # the loss went non-finite: keep the last finite chunk's scales
                        diverged = f"after {steps} steps: {e}"
                        for l_, v in zip(logs, saved):
                            l_.copy_(v)
                        break
                    chunk += 1
                    steps += 10
                    forwards += 20
                with torch.no_grad():
                    for s_, l_ in zip(scales, logs):
                        s_.copy_(l_.exp())
            _sync(dev)
            seconds = time.perf_counter() - t0
            peak = _peak(dev)
        out[name] = {**_score(student, ref, fppl, rppl), "method": method, "lr": lr, "seconds": seconds,
                     "steps": steps, "forwards": forwards, "diverged": diverged if method != "backprop_adam" else None,
                       "peak_mib": peak, "static_mib": base_mib,
                       "training_extra_mib": None if peak is None else round(peak - base_mib, 2),
                       "n_scales": sum(s_.numel() for s_ in scales),
                       "loss_first": curve[0] if curve else None, "loss_last": curve[-1] if curve else None,
                       "loss_curve": curve[:: max(1, len(curve) // 100)]}
        _log({"row": name, **out[name]})
        del student
    return {"scheme": f"W{args.bits} g{args.group}: only the LSQ scales train (weights fixed, float; Q(W) starts as RTN)",
            "float_perplexity": fppl, "rtn_perplexity": rppl, "wall_seconds_each": args.zo_seconds,
            "rows": out}


# --------------------------------------------------------------------------------------------------- QLoRA

def _bnb_model(model, torch_dtype):
    import bitsandbytes as bnb

    from qtutor.model import decoder_linears

    m = copy.deepcopy(model).cpu()
    for name, lin in decoder_linears(m).items():
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=torch_dtype, compress_statistics=True, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, compress_statistics=True,
                                     quant_type="nf4")
        parent, _, child = name.rpartition(".")
        setattr(m.get_submodule(parent), child, q)
    return m


def part_qlora(args, model, tok) -> dict:
    import bitsandbytes as bnb
    import peft

    from qtutor.config import NF4Config
    from qtutor.methods.nf4 import dequantize_4bit
    from qtutor.nn import NF4Linear, convert
    from qtutor.nn.lora import LoRALinear, add_lora_, lora_parameters, merge_lora

    dev, dt = args.device, getattr(torch, args.lora_dtype)
    steps, bs, seq = args.lora_steps, args.lora_batch, args.lora_seq
    train = calibration_samples(tok, Corpus.SHAKESPEARE, n_samples=steps * bs, seq_len=seq, seed=0).to(dev)
    held = calibration_samples(tok, Corpus.SHAKESPEARE, n_samples=args.lora_held, seq_len=256, seed=1,
                               heldout=True).to(dev)
    target = ("q_proj", "v_proj")
    fmodel = copy.deepcopy(model).to(dtype=dt).cpu()

    def held_loss(m):
        with torch.no_grad():
            return sum(float(m(h, labels=h).loss) for h in held.split(4)) / len(held.split(4))

    def train_loop(m, params, name):
        opt = torch.optim.AdamW(params, lr=args.lora_lr, weight_decay=0.0)
        curve, held_curve = [], [(0, held_loss(m))]
        _sync(dev)
        static = _allocated(dev)
        _reset_peak(dev)
        t = time.perf_counter()
        for step in range(steps):
            b = train[step * bs:(step + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = m(b, labels=b).loss
            loss.backward()
            opt.step()
            curve.append(float(loss.detach()))
            if (step + 1) % args.lora_eval_every == 0:
                held_curve.append((step + 1, held_loss(m)))
                print(f"{name} step {step + 1}: train {curve[-1]:.4f} held-out {held_curve[-1][1]:.4f}", flush=True)
        _sync(dev)
        seconds = time.perf_counter() - t
        opt_bytes = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                        if isinstance(v, torch.Tensor))
        return {"loss_curve": curve, "held_out": held_curve, "seconds_per_step": seconds / steps,
                "static_mib": static, "peak_mib": _peak(dev), "optimizer_states_mib": _mib(opt_bytes)}

    # -- qtutor: NF4Linear + LoRALinear
    torch.manual_seed(0)
    qm = copy.deepcopy(fmodel)
    convert(qm, NF4Config())
    qm.to(dev)
    names = add_lora_(qm, lambda n: n.endswith(target), r=8, alpha=16, adapter_dtype=dt)
    init = {n: (qm.get_submodule(n).lora_A.detach().clone(), qm.get_submodule(n).lora_B.detach().clone())
            for n in names}
    nf4 = [m for m in qm.modules() if isinstance(m, NF4Linear)]
    base_bytes = sum(b.numel() * b.element_size() for m in nf4 for b in (m.packed, m.absmax, m.absmax2, m.offset))
    adapters = lora_parameters(qm)
    ours = {"base_mib": _mib(base_bytes), "adapters_mib": _mib(sum(p.numel() * p.element_size() for p in adapters)),
            "trainable": sum(p.numel() for p in adapters)}
    ours.update(train_loop(qm, adapters, "qtutor"))
    ours["grads_only_on_adapters"] = all(p.grad is None for n, p in qm.named_parameters() if "lora_" not in n)
    merged = copy.deepcopy(qm)
    for n in names:
        parent, _, child = n.rpartition(".")
        setattr(merged.get_submodule(parent), child, merge_lora(merged.get_submodule(n)))
    ours["held_out_merged"] = held_loss(merged)
    bases = {n: (m.base if isinstance(m, LoRALinear) else m) for n, m in qm.named_modules()
             if isinstance(m, (NF4Linear, LoRALinear)) and not n.endswith(".base")}
    w_ours = {n: dequantize_4bit(b.state()).float().cpu() for n, b in bases.items()}
    del merged, qm, adapters, bases
    if _cuda(dev):
        torch.cuda.empty_cache()

    # -- peer: bitsandbytes Linear4bit + peft LoRA, the same initial adapters
    torch.manual_seed(0)
    pm = _bnb_model(fmodel, dt).to(dev)  # Params4bit quantizes on the move to the device
    diffs, differ, total = [], 0, 0
    for n, m in pm.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            d = (bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float().cpu() - w_ours[n]).abs()
            diffs.append(float(d.max()))
            differ, total = differ + int((d > 0).sum()), total + d.numel()
    del w_ours
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(target), bias="none")
    pm.is_loaded_in_4bit = True  # what from_pretrained(quantization_config=BitsAndBytesConfig) sets: peft's bnb layer
    pm = peft.get_peft_model(pm, cfg, autocast_adapter_dtype=False)
    for n in names:
        layer = pm.base_model.model.get_submodule(n)
        a, b = init[n]
        layer.lora_A["default"].weight.data = a.to(dev, dt).clone()
        layer.lora_B["default"].weight.data = b.to(dev, dt).clone()
    p_adapters = [p for n, p in pm.named_parameters() if p.requires_grad]
    base_bytes_bnb = sum(m.weight.data.numel() * m.weight.data.element_size()
                         + sum(t.numel() * t.element_size() for t in _qs_tensors(m.weight.quant_state))
                         for m in pm.modules() if isinstance(m, bnb.nn.Linear4bit))
    peer = {"base_mib": _mib(base_bytes_bnb),
            "adapters_mib": _mib(sum(p.numel() * p.element_size() for p in p_adapters)),
            "trainable": sum(p.numel() for p in p_adapters)}
    peer.update(train_loop(pm, p_adapters, "bnb+peft"))
    peer["peft_layer"] = type(pm.base_model.model.get_submodule(names[0])).__module__ + "." + \
        type(pm.base_model.model.get_submodule(names[0])).__name__
    try:
        peer["held_out_merged"] = held_loss(pm.merge_and_unload())
    except RuntimeError as e:  # peft merges into Linear4bit only with its bnb layer (dispatched with a GPU)
        peer["held_out_merged"], peer["merge_error"] = None, str(e)[:200]
    for r in (ours, peer):
        r["activations_and_grads_mib"] = (None if r["peak_mib"] is None else
                                          round(r["peak_mib"] - r["static_mib"] - r["optimizer_states_mib"], 2))
    diff = [abs(a - b) for a, b in zip(ours["loss_curve"], peer["loss_curve"])]
    return {"setting": {"rank": 8, "alpha": 16, "targets": list(target), "adapter_dtype": args.lora_dtype,
                        "compute_dtype": args.lora_dtype, "optimizer": f"AdamW lr {args.lora_lr}, no weight decay",
                        "steps": steps, "batch": bs, "seq_len": seq, "held_out": f"{args.lora_held} x 256 Tiny Shakespeare windows "
                        "from the last 10 %", "adapters": len(names)},
            "base_max_abs_diff_vs_bnb": max(diffs), "n_base_layers": len(diffs),
            "base_weights_differing_from_bnb": differ, "base_weights": total,
            "max_abs_train_loss_diff": max(diff), "mean_abs_train_loss_diff": sum(diff) / len(diff),
            "qtutor": ours, "bitsandbytes_peft": peer,
            "versions": {"bitsandbytes": bnb.__version__, "peft": peft.__version__}}


def _qs_tensors(qs) -> list[torch.Tensor]:
    out = [qs.absmax]
    if getattr(qs, "state2", None) is not None:
        out += [qs.state2.absmax, qs.state2.code]
    if getattr(qs, "offset", None) is not None:
        out.append(qs.offset)
    return [t for t in out if isinstance(t, torch.Tensor)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--part", choices=["qat", "zo", "qlora"], required=True)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens for scoring")
    ap.add_argument("--train-windows", type=int, default=512, help="WikiText-2 train windows of 512 for QAT")
    ap.add_argument("--block-windows", type=int, default=64)
    ap.add_argument("--block-steps", type=int, default=100)
    ap.add_argument("--distill-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lrs", default="1e-5:1e-4,1e-4:1e-3",
                    help="whole-model QAT learning rates, weights:scales; the first pair also starts from block-wise")
    ap.add_argument("--zo-seconds", type=float, default=60.0)
    ap.add_argument("--zo-lrs", default="1e-4,1e-3", help="MeZO learning rates on the log-scales, one run each")
    ap.add_argument("--zo-eps", type=float, default=1e-3)
    ap.add_argument("--zo-bp-lr", type=float, default=1e-4)
    ap.add_argument("--lora-steps", type=int, default=200)
    ap.add_argument("--lora-batch", type=int, default=8)
    ap.add_argument("--lora-seq", type=int, default=256)
    ap.add_argument("--lora-lr", type=float, default=5e-4)
    ap.add_argument("--lora-eval-every", type=int, default=25)
    ap.add_argument("--lora-held", type=int, default=16)
    ap.add_argument("--lora-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = ap.parse_args()
    setup_notebook(seed=0, threads=None)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    model, tok = load_model(device=args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    if args.part == "qlora":
        result = part_qlora(args, model, tok)
    else:
        ref = reference_logits(model, tok, EvalConfig(ctx=512, n_windows=args.windows, batch_size=4))
        result = (part_qat if args.part == "qat" else part_zo)(args, model, tok, ref)
        result["eval"] = f"first {args.windows} WikiText-2 test windows of 512 tokens (no BOS), vs the float model"
    result.update({
        "part": args.part,
        "device": torch.cuda.get_device_name() if _cuda(args.device) else platform.processor() or platform.machine(),
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/qat_qlora.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "versions": {**result.get("versions", {}), "torch": torch.__version__, "transformers": transformers.__version__,
                     "triton": _triton(), "python": platform.python_version()},
        "total_seconds": time.perf_counter() - t0,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} in {result['total_seconds']:.0f} s")


def _triton() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
