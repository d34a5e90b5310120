"""Save a GPTQ/AWQ-quantized model as a checkpoint other tools read, and load it back into ``PackedLinear``s.

``save_quantized(model, results, folder, fmt)`` writes ``config.json`` (the model's
config with the ``quantization_config`` each ecosystem expects) and
``model.safetensors``: packed tensors for every quantized linear, the other
tensors (embeddings, norms, LM head) as they are in the model.

* ``fmt="gptq"``: AutoGPTQ/GPTQModel v1 (``checkpoint_format: gptq``, zero − 1);
* ``fmt="gptq_v2"``: GPTQModel's v2 (zeros as they are);
* ``fmt="awq"``: AutoAWQ GEMM (``quant_method: awq, version: gemm``);
* ``fmt="compressed-tensors"``: ``pack-quantized``, as llm-compressor writes for vLLM;
  ``transformers`` loads it when the ``compressed-tensors`` package is installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..primitives.grid import QuantizedWeight
from ..model.walk import decoder_linears
from .layouts import (
    pack_awq, pack_compressed_tensors, pack_gptq, unpack_awq, unpack_compressed_tensors, unpack_gptq,
)
from .linear import PackedLinear

__all__ = ["FORMATS", "save_quantized", "load_quantized"]

FORMATS = ("gptq", "gptq_v2", "awq", "compressed-tensors")


def _describe(results: dict[str, QuantizedWeight]) -> tuple[int, int | None, bool, bool]:
    """``(n_bits, group_size, act_order, symmetric)`` shared by every layer."""
    kinds = {(qw.n_bits, qw.group_size) for qw in results.values()}
    if len(kinds) != 1:
        raise ValueError(f"every layer must share n_bits and group_size to be saved in one checkpoint, got {sorted(kinds, key=str)}")
    n_bits, group_size = kinds.pop()
    symmetric = all(bool(torch.all(qw.zero == 2 ** (n_bits - 1))) for qw in results.values())
    return n_bits, group_size, any(qw.has_act_order for qw in results.values()), symmetric


def _quantization_config(fmt: str, n_bits: int, group_size: int | None, act_order: bool, symmetric: bool) -> dict:
    gs = group_size if group_size is not None else -1
    if fmt in ("gptq", "gptq_v2"):
        return {"quant_method": "gptq", "bits": n_bits, "group_size": gs, "desc_act": act_order, "sym": symmetric,
                "true_sequential": True, "checkpoint_format": fmt}
    if fmt == "awq":
        return {"quant_method": "awq", "bits": n_bits, "group_size": gs, "zero_point": True, "version": "gemm"}
    weights = {"num_bits": n_bits, "type": "int", "symmetric": symmetric, "dynamic": False,
               "strategy": "group" if group_size is not None else "channel", "group_size": group_size}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ["lm_head"]}


def save_quantized(model: nn.Module, results: dict[str, QuantizedWeight], folder: str | Path, fmt: str = "gptq") -> Path:
    """Write ``model`` with the decoder linears in ``results`` packed in ``fmt``; returns the folder."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: choose one of {FORMATS}")
    linears = decoder_linears(model)
    missing = sorted(set(linears) - set(results))
    if missing:
        raise ValueError(f"no quantized weight for {len(missing)} decoder linears, e.g. {missing[0]}")
    n_bits, group_size, act_order, symmetric = _describe(results)
    tensors: dict[str, torch.Tensor] = {}
    for name, qw in results.items():
        if fmt in ("gptq", "gptq_v2"):
            packed = pack_gptq(qw, version=1 if fmt == "gptq" else 2)
        elif fmt == "awq":
            packed = pack_awq(qw)
        else:
            packed = pack_compressed_tensors(qw, symmetric=symmetric)
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    skip = {f"{n}.weight" for n in linears}
    for key, value in model.state_dict().items():
        if key not in skip and not (key == "lm_head.weight" and model.config.tie_word_embeddings):
            tensors[key] = value.detach().cpu().contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = _quantization_config(fmt, n_bits, group_size, act_order, symmetric)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def _read_format(qconfig: dict) -> tuple[str, int, int | None]:
    method = qconfig.get("quant_method")
    if method == "gptq":
        gs = qconfig["group_size"]
        return qconfig.get("checkpoint_format", "gptq"), qconfig["bits"], None if gs == -1 else gs
    if method == "awq":
        gs = qconfig["group_size"]
        return "awq", qconfig["bits"], None if gs == -1 else gs
    if method == "compressed-tensors":
        weights = qconfig["config_groups"]["group_0"]["weights"]
        return "compressed-tensors", weights["num_bits"], weights.get("group_size")
    raise ValueError(f"quant_method={method!r}: qtutor reads gptq, awq and compressed-tensors checkpoints")


def load_quantized(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A causal LM whose decoder linears are ``PackedLinear``s, from a folder written by ``save_quantized``."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    for needed in ("config.json", "model.safetensors"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder / needed} is missing: not a quantized checkpoint folder")
    raw = json.loads((folder / "config.json").read_text())
    if "quantization_config" not in raw:
        raise ValueError(f"{folder / 'config.json'} has no quantization_config")
    fmt, n_bits, group_size = _read_format(raw.pop("quantization_config"))
    config = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    linears = list(decoder_linears(model))
    with safe_open(str(folder / "model.safetensors"), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        for name in linears:
            part = {k[len(name) + 1:]: f.get_tensor(k) for k in keys if k.startswith(name + ".")}
            if not part:
                raise KeyError(f"{folder}: no tensors for {name}")
            if fmt in ("gptq", "gptq_v2"):
                qw = unpack_gptq(part, n_bits, group_size, version=1 if fmt == "gptq" else 2)
            elif fmt == "awq":
                qw = unpack_awq(part, group_size)
            else:
                qw = unpack_compressed_tensors(part, n_bits, group_size)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, PackedLinear(qw, part.get("bias"), scale_dtype=part.get(
                "scales", part.get("weight_scale")).dtype))
        packed = {k for k in keys for n in linears if k.startswith(n + ".")}
        rest = {k: f.get_tensor(k) for k in keys - packed}
    model.load_state_dict(rest, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    rotary = model.model.rotary_emb  # its inv_freq is computed, not saved
    model.model.rotary_emb = type(rotary)(config=config)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(f"{folder}: tensors missing from the checkpoint, e.g. {meta[0]}")
    return model.to(device).eval()
