"""NF4 / FP4 checkpoints in bitsandbytes' serialization, the form ``transformers`` saves and loads 4-bit models in.

``save_nf4(model, folder)`` writes a model whose decoder linears are :class:`qtutor.nn.NF4Linear` (from
``qtutor.nn.convert(model, NF4Config())``) as ``transformers`` + bitsandbytes ``save_pretrained`` writes a model
loaded with ``BitsAndBytesConfig(load_in_4bit=True, …)``: per linear ``weight`` (the packed codes, uint8
``(n/2, 1)``), ``weight.absmax`` (uint8 codes when double-quantized, else float32), ``weight.quant_map`` (the 16
levels), with double quantization ``weight.nested_absmax``, ``weight.nested_quant_map`` (the 256-entry dynamic
map), and ``weight.quant_state.bitsandbytes__nf4``: the JSON of the rest (type, block sizes, dtype, shape, nested
offset) as uint8 bytes, as bitsandbytes' ``QuantState.as_dict(packed=True)`` builds it; ``config.json`` carries
the ``quantization_config`` transformers writes (``quant_method: bitsandbytes``). Tested byte for byte against
bitsandbytes 0.50.2's own save of the same float model, and loaded by transformers with bitsandbytes.

``load_nf4(folder)`` reads such a folder (qtutor's or one transformers saved) back into ``NF4Linear``s, checking
every tensor's name, dtype and shape before building the model. Saving is atomic, as for the other checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..config import NF4Config
from ..model.walk import decoder_blocks, decoder_linears
from ..nn.nf4 import NF4Linear
from .files import read_header

__all__ = ["save_nf4", "load_nf4", "is_bnb_4bit", "nf4_quantization_config"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_bnb_4bit(quantization_config: dict) -> bool:
    return (isinstance(quantization_config, dict) and quantization_config.get("quant_method") == "bitsandbytes"
            and bool(quantization_config.get("load_in_4bit")))


def nf4_quantization_config(config: NF4Config, compute_dtype: torch.dtype) -> dict:
    """The ``quantization_config`` transformers writes for ``BitsAndBytesConfig(load_in_4bit=True, …)``."""
    return {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": _dtype_name(compute_dtype),
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": config.quant_type.value,
            "bnb_4bit_use_double_quant": config.double_quant, "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0,
            "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes"}


def _layer_tensors(name: str, m: NF4Linear) -> dict[str, torch.Tensor]:
    """One layer's tensors, named and ordered as bitsandbytes' ``Linear4bit._save_to_state_dict`` names them."""
    cfg = m.config
    p = f"{name}.weight"
    state = {"quant_type": cfg.quant_type.value, "blocksize": cfg.blocksize, "dtype": _dtype_name(m.dtype),
             "shape": [m.out_features, m.in_features]}
    out = {p: m.packed, f"{p}.absmax": m.absmax, f"{p}.quant_map": m.levels}
    if cfg.double_quant:
        out |= {f"{p}.nested_absmax": m.absmax2, f"{p}.nested_quant_map": m.absmax_code}
        state |= {"nested_blocksize": cfg.dq_blocksize, "nested_dtype": _dtype_name(m.absmax2.dtype),
                  "nested_offset": float(m.offset.item())}
    out[f"{p}.quant_state.bitsandbytes__{cfg.quant_type.value}"] = torch.tensor(
        list(json.dumps(state).encode("utf-8")), dtype=torch.uint8)
    if m.bias is not None:
        out[f"{name}.bias"] = m.bias
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_nf4(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Write ``model`` (every decoder linear an ``NF4Linear``) as a bitsandbytes 4-bit checkpoint; returns the folder.

    ``folder`` is replaced as a whole (it may hold an older quantized checkpoint, nothing else); ``tokenizer`` is
    saved beside the weights.
    """
    from .checkpoint import write_checkpoint

    layers = {n: m for n, m in _slots(model).items()}
    not_nf4 = [n for n, m in layers.items() if not isinstance(m, NF4Linear)]
    if not layers or not_nf4:
        what = f"{not_nf4[0]} is a {type(layers[not_nf4[0]]).__name__}" if not_nf4 else "no decoder linears"
        raise ValueError(f"save_nf4 writes a model whose decoder linears are all NF4Linear ({what}): convert it "
                         "first with qtutor.nn.convert(model, NF4Config())")
    configs = {m.config for m in layers.values()}
    dtypes = {m.dtype for m in layers.values()}
    if len(configs) != 1 or len(dtypes) != 1:
        raise ValueError(f"every NF4Linear must share one NF4Config and dtype to be saved in one checkpoint, got "
                         f"{len(configs)} configs and dtypes {sorted(map(str, dtypes))}")
    tensors: dict[str, torch.Tensor] = {}
    for name, m in layers.items():
        tensors |= _layer_tensors(name, m)
    packed = {f"{n}.{k}" for n in layers for k, _ in layers[n].named_parameters()} | {
        f"{n}.{k}" for n in layers for k, _ in layers[n].named_buffers()}
    for key, value in model.state_dict().items():
        if key in packed or (key == "lm_head.weight" and model.config.tie_word_embeddings):
            continue
        tensors[key] = value.detach().cpu().contiguous()
    config = model.config.to_dict()
    config["quantization_config"] = nf4_quantization_config(configs.pop(), dtypes.pop())
    return write_checkpoint(folder, tensors, config, tokenizer)


def _slots(model: nn.Module) -> dict[str, nn.Module]:
    """The decoder linears' slots, whatever module fills them (``decoder_linears`` finds ``nn.Linear`` only)."""
    slots = {}
    for i, block in enumerate(decoder_blocks(model)):
        for name, mod in block.named_modules():
            if name.endswith("_proj") and (isinstance(mod, (nn.Linear, NF4Linear)) or
                                           type(mod).__module__.startswith("qtutor.nn")):
                slots[f"model.layers.{i}.{name}"] = mod
    return slots


def _check(path: Path, key: str, header: dict, dtype: torch.dtype | tuple, shape: tuple | None, why: str):
    info = header.get(key)
    if info is None:
        raise ValueError(f"{path}: tensor {key!r} is missing ({why})")
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if info.dtype not in dtypes or (shape is not None and info.shape != tuple(shape)):
        want = " or ".join(_dtype_name(d) for d in dtypes) + (f" {tuple(shape)}" if shape is not None else "")
        raise ValueError(f"{path}: tensor {key!r} is {_dtype_name(info.dtype)} {info.shape}, expected {want} ({why})")


def load_nf4(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A causal LM whose decoder linears are ``NF4Linear``s, from a bitsandbytes 4-bit checkpoint folder."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..config import NF4Config as Cfg

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    qc = raw.pop("quantization_config")
    qtype = qc.get("bnb_4bit_quant_type", "fp4")
    if qtype not in ("nf4", "fp4"):
        raise ValueError(f"{folder / 'config.json'}: bnb_4bit_quant_type={qtype!r}; allowed nf4, fp4")
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (a sharded checkpoint is not read here)")
    header = read_header(path)
    config = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    linears = decoder_linears(model)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for name, lin in linears.items():
            p, n = f"{name}.weight", lin.out_features * lin.in_features
            why = f"bitsandbytes {qtype} for a ({lin.out_features}, {lin.in_features}) layer as the config says"
            _check(path, p, header, torch.uint8, ((n + 1) // 2, 1), why)
            skey = f"{p}.quant_state.bitsandbytes__{qtype}"
            _check(path, skey, header, torch.uint8, None, why)
            state = json.loads(bytes(f.get_tensor(skey).tolist()).decode("utf-8"))
            if list(state.get("shape", [])) != [lin.out_features, lin.in_features]:
                raise ValueError(f"{path}: {skey} says shape {state.get('shape')}, the config "
                                 f"({lin.out_features}, {lin.in_features})")
            double = "nested_blocksize" in state
            cfg = Cfg(quant_type=type(Cfg().quant_type)(qtype), blocksize=int(state["blocksize"]),
                      double_quant=double, dq_blocksize=int(state.get("nested_blocksize", 256)))
            n_blocks = -(-n // cfg.blocksize)
            _check(path, f"{p}.absmax", header, torch.uint8 if double else torch.float32, (n_blocks,), why)
            absmax2 = offset = None
            if double:
                _check(path, f"{p}.nested_absmax", header, torch.float32, (-(-n_blocks // cfg.dq_blocksize),), why)
                absmax2 = f.get_tensor(f"{p}.nested_absmax")
                offset = torch.tensor(float(state["nested_offset"]), dtype=torch.float32)
            dtype = _DTYPES.get(state.get("dtype"))
            if dtype is None:
                raise ValueError(f"{path}: {skey} has dtype {state.get('dtype')!r}; allowed {sorted(_DTYPES)}")
            bias = f.get_tensor(f"{name}.bias") if f"{name}.bias" in header else None
            module = NF4Linear.from_tensors(f.get_tensor(p), f.get_tensor(f"{p}.absmax"), (lin.out_features,
                                            lin.in_features), dtype, cfg, offset, absmax2, bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)
        rest = {k: f.get_tensor(k) for k in header if not any(k.startswith(n + ".") for n in linears)}
    params = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, t in rest.items():
        if key not in params or tuple(t.shape) != params[key]:
            raise ValueError(f"{path}: tensor {key!r} {tuple(t.shape)} has no place in this model "
                             f"({'expected ' + str(params[key]) if key in params else 'unknown name'})")
    model.load_state_dict(rest, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(f"{path}: tensors missing from the checkpoint, e.g. {meta[0]}")
    return model.to(device).eval()
