"""Which quantization to use: ranked options for a model and a machine, each resting on a named measurement.

:func:`recommend` takes the model's shape (a preset such as ``"llama-3-8b"``, a ``transformers`` config, or a
dict of the config's sizes), the memory available (GPU or CPU), the GPU generation and what matters (latency,
throughput, quality), and returns every option with

* its **size**, computed from exact bits per weight for these shapes (scales, zero-points and the 16-bit
  embeddings counted; GGUF files with llama.cpp's per-tensor type rules, :mod:`qtutor.gguf.file_types`), plus the
  fp16 KV cache for the context asked and a 10 % allowance for the runtime;
* whether it **fits** and runs on that hardware (FP8 needs compute capability ≥ 8.9: Ada or Hopper);
* its **quality** as the course measured it on SmolLM2-135M (KL to float and perplexity on WikiText-2 test, the
  file and row it comes from in ``benchmarks/results/``). A 135M model is a worst case: larger models lose less
  at the same bits (Dettmers & Zettlemoyer, "The case for 4-bit precision", ICML 2023), so the figures rank the
  options rather than predict a large model's loss;
* its measured **decode speed** where the course has one (batch-1 decode through 32 Llama-3-8B-shaped blocks on
  an H100, ``kernels_h100.json``), else ``None`` — not a guess;
* the **commands** that get there.

Ranking: options that do not fit or cannot run are last. ``quality_critical``: least KL first. ``latency``: the
measured decode speed-up first, then fewest bytes (batch-1 decode reads every weight once per token), among
options within ``max_kl`` of float (default 0.5 nats/token on SmolLM2); ``throughput``: W8A8 first (weights and
activations both 8-bit run on the 8-bit tensor cores at large batch, and free memory for a larger batch; their
measured KL on SmolLM2 is under 0.04), then least KL. The ranking rule and the measurements behind each option are in the result, so no verdict is hidden.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PRESETS", "Option", "recommend", "model_shape"]

_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

# config sizes of the models the seeds ask about (Llama 3 8B and 70B: Meta's config.json; SmolLM2: the course model)
PRESETS = {
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-3-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}
GENERATIONS = ("hopper", "ada", "ampere", "none")
PRIORITIES = ("latency", "throughput")


@dataclass
class Option:
    key: str
    label: str
    bytes: int = 0
    bits_per_weight: float = 0.0  # decoder linears
    fits: bool = False
    runs: bool = True
    why_not: str = ""
    kl: float | None = None
    perplexity: float | None = None
    quality_source: str = ""
    decode_speedup: float | None = None
    speed_source: str = ""
    commands: list[str] = field(default_factory=list)

    @property
    def gigabytes(self) -> float:
        return self.bytes / 1e9


def model_shape(model) -> dict:
    """The sizes :func:`recommend` needs, from a preset name, a ``transformers`` config or model, or a dict."""
    if isinstance(model, str):
        if model.lower() not in PRESETS:
            raise ValueError(f"model={model!r}: allowed presets {', '.join(PRESETS)}, a transformers config, or a dict")
        return dict(PRESETS[model.lower()])
    cfg = getattr(model, "config", model)
    keys = PRESETS["llama-3-8b"].keys()
    get = (lambda k: cfg[k]) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
    try:
        shape = {k: get(k) for k in keys}
    except (KeyError, AttributeError) as e:
        raise ValueError(f"model: the config lacks {e}; needed: {', '.join(keys)}") from None
    for k, v in shape.items():
        if k != "tie_word_embeddings" and (not isinstance(v, int) or v < 1):
            raise ValueError(f"model: {k}={v!r} must be a positive integer")
    return shape


def _linears(s: dict) -> list[tuple[int, int]]:
    """(out, in) of every decoder linear."""
    h, i, kv = s["hidden_size"], s["intermediate_size"], s["num_key_value_heads"] * s["hidden_size"] // s["num_attention_heads"]
    block = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    return block * s["num_hidden_layers"]


def _rest_bytes(s: dict) -> int:
    """Embeddings (and an untied head) and norms in 16 bits."""
    emb = s["vocab_size"] * s["hidden_size"] * (1 if s["tie_word_embeddings"] else 2)
    norms = s["hidden_size"] * (2 * s["num_hidden_layers"] + 1)
    return 2 * (emb + norms)


def _gguf_bytes(s: dict, file_type: str) -> tuple[int, float]:
    import gguf

    from .gguf.file_types import choose_tensor_type

    h, i = s["hidden_size"], s["intermediate_size"]
    kv = s["num_key_value_heads"] * h // s["num_attention_heads"]
    tensors = {"token_embd.weight": (s["vocab_size"], h), "output_norm.weight": (h,)}
    if not s["tie_word_embeddings"]:
        tensors["output.weight"] = (s["vocab_size"], h)
    for b in range(s["num_hidden_layers"]):
        for n, shp in (("attn_q", (h, h)), ("attn_k", (kv, h)), ("attn_v", (kv, h)), ("attn_output", (h, h)),
                       ("ffn_gate", (i, h)), ("ffn_up", (i, h)), ("ffn_down", (h, i)),
                       ("attn_norm", (h,)), ("ffn_norm", (h,))):
            tensors[f"blk.{b}.{n}.weight"] = shp
    n_gqa = s["num_attention_heads"] // s["num_key_value_heads"]
    total, lin_bits, lin_n = 0, 0, 0
    for name, shp in tensors.items():
        numel = math.prod(shp)
        t = choose_tensor_type(name, tuple(reversed(shp)), file_type, s["num_hidden_layers"], n_gqa,
                               s["tie_word_embeddings"])
        if t in ("F32", "F16"):
            nbytes = numel * (4 if t == "F32" else 2)
        else:
            block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, t)]
            nbytes = numel // block * size
        total += nbytes
        if name.startswith("blk.") and len(shp) == 2:
            lin_bits, lin_n = lin_bits + 8 * nbytes, lin_n + numel
    return total, lin_bits / lin_n


def _load(name: str) -> dict:
    return json.loads((_RESULTS / name).read_text())


def _measured() -> dict[str, tuple[float, float, str]]:
    """option key -> (KL, perplexity, source) from the recorded SmolLM2 runs."""
    out = {}
    wo = _load("weight_only_quality_h100.json")
    for r in wo["table"]:
        if r["method"] == "AWQ" and r["format"] == "W4 g128":
            out["w4a16_awq"] = (r["kl"], r["perplexity"], "weight_only_quality_h100.json: AWQ W4 g128")
        if r["method"] == "GPTQ act-order" and r["format"] == "W4 g128":
            out["w4a16_gptq"] = (r["kl"], r["perplexity"], "weight_only_quality_h100.json: GPTQ act-order W4 g128")
        if r["method"] == "float":
            out["bf16"] = (0.0, r["perplexity"], "weight_only_quality_h100.json: float (the reference)")
    fm = _load("rotations_formats_h200.json")
    rows = {(r["weights"], r["activations"]): r for r in fm["formats"] if r["transform"] == "none"}
    w8 = {r["format"]: r for r in fm["w8a8"] if r["transform"] == "none"}
    out["fp8_w8a8"] = (w8["fp8_e4m3"]["kl"], w8["fp8_e4m3"]["perplexity"],
                       "rotations_formats_h200.json: w8a8 fp8_e4m3 (per-row weights, per-token activations)")
    out["int8_w8a8"] = (w8["int8"]["kl"], w8["int8"]["perplexity"],
                        "rotations_formats_h200.json: w8a8 int8 (per-row weights, per-token activations)")
    nf4 = rows[("nf4", "float")]
    out["nf4"] = (nf4["kl"], nf4["perplexity"], "rotations_formats_h200.json: formats nf4 weight-only")
    i8 = rows[("int8", "float")]
    out["gguf_q8_0"] = (i8["kl"], i8["perplexity"], "rotations_formats_h200.json: int8 per-row weight-only "
                        "(a bound: Q8_0's 32-weight blocks are finer)")
    g32 = rows[("int4_g32", "float")]
    out["gguf_q4_k_m"] = (g32["kl"], g32["perplexity"], "rotations_formats_h200.json: int4 g32 weight-only (a proxy: "
                          "Q4_K_M's 4.5-bit-and-up mix of Q4_K/Q6_K is not measured whole-model by the course)")
    return out


def _decode() -> dict[str, tuple[float, str]]:
    d = _load("kernels_h100.json")["decode_8b_shaped"]
    src = "kernels_h100.json: decode_8b_shaped (batch 1, 32 Llama-3-8B blocks, H100)"
    return {"bf16": (1.0, src + ", fp16"), "w4a16_awq": (d["qtutor_w4a16"]["speedup_vs_fp16"], src + ", W4A16"),
            "w4a16_gptq": (d["qtutor_w4a16"]["speedup_vs_fp16"], src + ", W4A16"),
            "nf4": (d["bnb_nf4"]["speedup_vs_fp16"], src + ", bitsandbytes NF4")}


def recommend(model, memory_gb: float, gpu: str = "hopper", priority: str = "latency",
              quality_critical: bool = False, context: int = 4096, batch: int = 1, max_kl: float = 0.5,
              name: str = "MODEL") -> list[Option]:
    """Every option, best first (see the module docstring for the rule). ``gpu='none'``: ``memory_gb`` is RAM."""
    s = model_shape(model)
    if not (isinstance(memory_gb, (int, float)) and math.isfinite(memory_gb) and memory_gb > 0):
        raise ValueError(f"memory_gb={memory_gb!r}: must be a positive number of GB")
    if gpu not in GENERATIONS:
        raise ValueError(f"gpu={gpu!r}: allowed {', '.join(GENERATIONS)}")
    if priority not in PRIORITIES:
        raise ValueError(f"priority={priority!r}: allowed {', '.join(PRIORITIES)}")
    for k, v in (("context", context), ("batch", batch)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{k}={v!r}: must be a positive integer")
    lins = _linears(s)
    n_lin = sum(o * i for o, i in lins)
    rest = _rest_bytes(s)
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    kv = 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * head_dim * 2 * context * batch

    def per_row_8bit() -> float:  # 8-bit codes and one fp32 scale per output row
        return sum(o * (8 * i + 32) for o, i in lins) / 8

    def grouped(bits: int, g: int) -> float:  # codes, fp16 scale and packed zero-point per group (GPTQ/AWQ files)
        return sum(o * (bits * i + math.ceil(i / g) * (16 + bits)) for o, i in lins) / 8

    def nf4() -> float:
        from .methods.nf4 import nf4_bits_per_weight

        return sum(o * i * nf4_bits_per_weight(o * i) for o, i in lins) / 8

    out = f"{name}-{{}}"
    opts = [
        Option("bf16", "bf16, unquantized", int(2 * n_lin + rest), 16.0,
               commands=[f"AutoModelForCausalLM.from_pretrained('{name}', dtype=torch.bfloat16)",
                         f"vllm serve {name} --dtype bfloat16"]),
        Option("fp8_w8a8", "FP8 e4m3 W8A8 (per-row weights, per-token activations)", int(per_row_8bit() + rest), 0,
               commands=[f"vllm serve {name} --quantization fp8  # dynamic per-token activation scales",
                         "qtutor: qtutor.nn.convert(model, FP8Config()) (notebook 10)"]),
        Option("int8_w8a8", "INT8 W8A8 with SmoothQuant (per-row weights, per-token activations)",
               int(per_row_8bit() + rest), 0,
               commands=["qtutor: qtutor.nn.convert(model, W8A8Config()) after SmoothQuant (notebooks 04–05)"]),
        Option("w4a16_awq", "AWQ W4 g128 (4-bit weights, 16-bit activations)", int(grouped(4, 128) + rest), 0,
               commands=[f"qtutor quantize {name} {out.format('awq')} --method awq --group-size 128",
                         f"vllm serve {out.format('awq')}  # AWQ/Marlin kernels"]),
        Option("w4a16_gptq", "GPTQ act-order W4 g128 (compressed-tensors, symmetric)", int(grouped(4, 128) + rest), 0,
               commands=[f"qtutor quantize {name} {out.format('gptq')} --method gptq --group-size 128 "
                         "--format compressed-tensors",
                         f"AutoModelForCausalLM.from_pretrained('{out.format('gptq')}')  # or vllm serve"]),
        Option("nf4", "NF4 with double quantization (bitsandbytes, QLoRA's format)", int(nf4() + rest), 0,
               commands=[f"AutoModelForCausalLM.from_pretrained('{name}', quantization_config=BitsAndBytesConfig("
                         "load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, "
                         "bnb_4bit_compute_dtype=torch.bfloat16))"]),
    ]
    for ft in ("Q8_0", "Q4_K_M"):
        nbytes, bpw = _gguf_bytes(s, ft)
        opts.append(Option(f"gguf_{ft.lower()}", f"GGUF {ft} (llama.cpp; CPU, Apple or any GPU)", nbytes, bpw,
                           commands=[f"qtutor quantize {name} {out.format(ft)}.gguf --gguf {ft}",
                                     f"llama-cli -m {out.format(ft)}.gguf  # llama.cpp"]))
    measured, decode = _measured(), _decode()
    budget = memory_gb * 1e9
    for o in opts:
        if not o.bits_per_weight:
            o.bits_per_weight = 8 * (o.bytes - rest) / n_lin
        o.kl, o.perplexity, o.quality_source = measured[o.key]
        if o.key in decode:
            o.decode_speedup, o.speed_source = decode[o.key]
        need = (o.bytes + kv) * 1.1
        o.fits = need <= budget
        if not o.fits:
            o.why_not = f"needs {need / 1e9:.1f} GB (weights {o.gigabytes:.1f} + KV cache {kv / 1e9:.1f}, +10 %)"
        if gpu == "none" and not o.key.startswith(("gguf", "bf16")):
            o.runs, o.why_not = False, "needs a GPU kernel (on a CPU use llama.cpp's GGUF)"
        if o.key == "fp8_w8a8" and gpu not in ("hopper", "ada"):
            o.runs, o.why_not = False, "FP8 tensor cores need compute capability 8.9 (Ada) or 9.0 (Hopper)"
        if o.key == "nf4" and gpu == "none":
            o.runs = False

    def key(o: Option):
        usable = o.fits and o.runs
        if quality_critical:
            return (not usable, o.kl, o.bytes)
        good = o.kl <= max_kl
        if priority == "latency":
            return (not usable, not good, -(o.decode_speedup or 0.0), o.bytes, o.kl)
        return (not usable, not good, o.key not in ("fp8_w8a8", "int8_w8a8"), o.kl, o.bytes)

    return sorted(opts, key=key)


def summary(options: list[Option], top: int = 3) -> str:
    """The first ``top`` options, one line each, with the measurements they rest on."""
    lines = []
    for rank, o in enumerate(options[:top], 1):
        state = ("fits" if o.fits else "does not fit") if o.runs else "cannot run here"
        state += f" ({o.why_not})" if o.why_not else ""
        speed = f", decode {o.decode_speedup:.2f}× fp16 [{o.speed_source}]" if o.decode_speedup else ""
        lines.append(f"{rank}. {o.label}: {o.gigabytes:.1f} GB of weights ({o.bits_per_weight:.2f} bits per weight), "
                     f"{state}; KL {o.kl:.3f} on SmolLM2 [{o.quality_source}]{speed}\n   → {o.commands[0]}")
    return "\n".join(lines)
