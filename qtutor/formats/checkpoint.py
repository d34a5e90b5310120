"""Save a GPTQ/AWQ-quantized model as a checkpoint other tools read, and load it back into ``W4A16Linear``s.

``save_quantized(model, results, folder, fmt)`` writes ``config.json`` (the model's
config with the ``quantization_config`` each ecosystem expects) and
``model.safetensors``: packed tensors for every quantized linear, the other
tensors (embeddings, norms, LM head) as they are in the model. ``fmt`` names a
layout of :data:`qtutor.formats.registry.LAYOUTS`:

* ``"gptq"``: AutoGPTQ/GPTQModel v1 (``checkpoint_format: gptq``, zero − 1);
* ``"gptq_v2"``: GPTQModel's v2 (zeros as they are);
* ``"awq"``: AutoAWQ GEMM (``quant_method: awq, version: gemm``);
* ``"compressed-tensors"``: ``pack-quantized``, as llm-compressor writes for vLLM;
  ``transformers`` loads it when the ``compressed-tensors`` package is installed.

Saving is atomic: both files go to a temporary folder beside ``folder``, which then
replaces it whole — an error leaves the old checkpoint as it was, and one format
saved over another leaves no file of the first. Loading checks the header, then
every tensor's name, dtype and shape against the config and the model, naming the
tensor, before it reads one; the packed modules are built from the file's tensors
(:meth:`W4A16Linear.from_tensors`), in the module's layout directly for GPTQ v2.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..model.walk import decoder_linears
from ..nn.w4a16 import W4A16Linear
from ..primitives.grid import QuantizedWeight
from .bnb4 import is_bnb_4bit, load_nf4
from .files import TensorInfo, atomic_folder, check_folder_names, read_header
from .registry import LAYOUTS, Layout, layout_for

__all__ = ["FORMATS", "CHECKPOINT_FILES", "check_replaceable", "save_quantized", "load_quantized"]

FORMATS = tuple(LAYOUTS)
CHECKPOINT_FILES = frozenset({"config.json", "model.safetensors"})
# what a Hugging Face tokenizer's save_pretrained writes: a checkpoint folder may hold these beside its weights
TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                             "merges.txt", "added_tokens.json", "tokenizer.model", "chat_template.jinja"})
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _describe(results: dict[str, QuantizedWeight], mixed: bool = False) -> tuple[int, int | None, bool, bool]:
    """``(n_bits, group_size, act_order, symmetric)`` shared by every layer (``mixed``: the first layer's bits and
    group size; the others may differ)."""
    kinds = {(qw.n_bits, qw.group_size) for qw in results.values()}
    if len(kinds) != 1 and not mixed:
        raise ValueError(f"every layer must share n_bits and group_size to be saved in one checkpoint, got "
                         f"{sorted(kinds, key=str)}; fmt='compressed-tensors' stores one scheme per layer")
    n_bits, group_size = next(iter(results.values())).n_bits, next(iter(results.values())).group_size
    symmetric = all(bool(torch.all(qw.zero == 2 ** (qw.n_bits - 1))) for qw in results.values())
    return n_bits, group_size, any(qw.has_act_order for qw in results.values()), symmetric


def check_replaceable(folder: str | Path) -> None:
    """Refuse ``folder`` unless it is missing, empty or an earlier quantized checkpoint (with its tokenizer).

    Saving replaces the folder as a whole, so a folder with other files in it, or a float model's folder
    (a ``config.json`` without ``quantization_config``, e.g. the model being quantized), is refused before
    anything is computed or written.
    """
    folder = Path(folder)
    check_folder_names(folder, CHECKPOINT_FILES | TOKENIZER_FILES)
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    if not names:
        return
    if "config.json" not in names:  # tokenizer files alone are not a checkpoint
        check_folder_names(folder, frozenset())
    try:
        quantized = "quantization_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        quantized = False
    if not quantized:
        raise ValueError(f"{folder} holds a model that is not a quantized checkpoint (its config.json has no "
                         "quantization_config): it would be replaced as a whole, so choose an empty or new folder")


def save_quantized(model: nn.Module, results: dict[str, QuantizedWeight], folder: str | Path, fmt: str = "gptq",
                   tokenizer=None) -> Path:
    """Write ``model`` with the decoder linears in ``results`` packed in layout ``fmt``; returns the folder.

    ``results`` may mix bit widths and group sizes across layers in the ``"compressed-tensors"`` layout only (one
    config group per scheme, targeting its layers by name, as llm-compressor writes a per-layer recipe).

    ``folder`` is replaced as a whole (it may hold an older checkpoint, nothing else). ``tokenizer``: saved beside
    the weights too (``save_pretrained``), so the folder loads on its own.
    """
    if fmt not in LAYOUTS:
        raise ValueError(f"fmt={fmt!r}: choose one of {FORMATS}")
    layout = LAYOUTS[fmt]
    linears = decoder_linears(model)
    missing = sorted(set(linears) - set(results))
    if missing:
        raise ValueError(f"no quantized weight for {len(missing)} decoder linears, e.g. {missing[0]}")
    mixed = fmt == "compressed-tensors" and len({(qw.n_bits, qw.group_size) for qw in results.values()}) > 1
    n_bits, group_size, act_order, symmetric = _describe(results, mixed)
    tensors: dict[str, torch.Tensor] = {}
    for name, qw in results.items():
        try:
            packed = layout.pack(qw, symmetric)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    skip = {f"{n}.weight" for n in linears}
    for key, value in model.state_dict().items():
        if key not in skip and not (key == "lm_head.weight" and model.config.tie_word_embeddings):
            tensors[key] = value.detach().cpu().contiguous()
    config = model.config.to_dict()
    if mixed:  # one config group per scheme, each naming its layers
        kinds = {n: (qw.n_bits, qw.group_size) for n, qw in results.items()}
        config["quantization_config"] = layout.mixed_quantization_config(kinds, symmetric)
    else:
        config["quantization_config"] = layout.quantization_config(n_bits, group_size, act_order, symmetric)
    return write_checkpoint(folder, tensors, config, tokenizer)


def write_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], config: dict, tokenizer=None) -> Path:
    """``model.safetensors``, ``config.json`` (and the tokenizer) into ``folder``, replacing it as a whole, atomically;
    ``folder`` may hold an older quantized checkpoint, nothing else (:func:`check_replaceable`)."""
    folder = Path(folder)
    check_replaceable(folder)
    with atomic_folder(folder, CHECKPOINT_FILES | TOKENIZER_FILES) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return folder


def _check_tensor(path: Path, key: str, info: TensorInfo | None, dtypes: tuple[torch.dtype, ...],
                  shape: tuple[int, ...], why: str) -> None:
    if info is None:
        raise ValueError(f"{path}: tensor {key!r} is missing ({why})")
    if info.dtype not in dtypes or info.shape != tuple(shape):
        want = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{path}: tensor {key!r} is {str(info.dtype).removeprefix('torch.')} {info.shape}, "
                         f"expected {want} {tuple(shape)} ({why})")


def _check_file(path: Path, header: dict[str, TensorInfo], model: nn.Module, layout: Layout,
                kinds: dict[str, tuple[int, int | None, bool]]) -> None:
    """Every tensor of the file against the config (``layout``, each layer's bits, groups and symmetry) and the
    model, before reading any."""
    linears = decoder_linears(model)
    n_layers = len(model.model.layers)
    for key in header:
        m = re.match(r"model\.layers\.(\d+)\.", key)
        if m and int(m.group(1)) >= n_layers:
            raise ValueError(f"{path}: tensor {key!r} belongs to layer {m.group(1)}, but the config has "
                             f"num_hidden_layers={n_layers}")
    claimed: set[str] = set()
    for name, lin in linears.items():
        n_bits, group_size, symmetric = kinds[name]
        why = (f"{layout.name}, {n_bits}-bit, group_size={group_size}, for a ({lin.out_features}, "
               f"{lin.in_features}) layer as the config says")
        spec = layout.expected(lin.out_features, lin.in_features, n_bits, group_size, symmetric)
        if lin.bias is not None or f"{name}.bias" in header:  # AutoGPTQ stores a (zero) bias for every layer
            spec["bias"] = (_FLOATS, (lin.out_features,))
        for part, (dtypes, shape) in spec.items():
            _check_tensor(path, f"{name}.{part}", header.get(f"{name}.{part}"), dtypes, shape, why)
        claimed |= {f"{name}.{part}" for part in spec}
        extra = sorted(k for k in header if k.startswith(name + ".") and k not in claimed)
        if extra:
            raise ValueError(f"{path}: tensor {extra[0]!r} is not part of the {layout.name} layout of {name}")
    params = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, info in header.items():
        if key in claimed:
            continue
        if key not in params:
            raise ValueError(f"{path}: tensor {key!r} has no place in a {model.config.model_type} model with this config")
        _check_tensor(path, key, info, _FLOATS, params[key], "as the model built from config.json has it")


def load_quantized(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A causal LM whose decoder linears are ``W4A16Linear``s, from a folder written by ``save_quantized``
    (or ``NF4Linear``s, from a bitsandbytes 4-bit folder: :func:`qtutor.formats.bnb4.load_nf4`).

    Raises ``ValueError`` naming the file and the tensor for anything that does not match:
    a corrupt or truncated file, a wrong dtype or shape, missing, extra or surplus-layer tensors.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    for needed in sorted(CHECKPOINT_FILES):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder / needed} is missing: not a quantized checkpoint folder")
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or "quantization_config" not in raw:
        raise ValueError(f"{folder / 'config.json'} has no quantization_config")
    if is_bnb_4bit(raw["quantization_config"]):  # NF4 / FP4 in bitsandbytes' serialization
        return load_nf4(folder, device)
    qconfig = raw.pop("quantization_config")
    try:
        layout, n_bits, group_size, symmetric = layout_for(qconfig)
    except ValueError as e:
        raise ValueError(f"{folder / 'config.json'}: {e}") from None
    path = folder / "model.safetensors"
    header = read_header(path)
    try:
        config = AutoConfig.for_model(**raw)
    except Exception as e:  # noqa: BLE001  (transformers raises many kinds for a bad config)
        raise ValueError(f"{folder / 'config.json'} does not describe a model transformers can build: {e}") from e
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    linears = list(decoder_linears(model))
    if hasattr(layout, "layer_kinds"):  # compressed-tensors: a scheme per config group, possibly per layer
        try:
            kinds = layout.layer_kinds(qconfig, linears)
        except ValueError as e:
            raise ValueError(f"{folder / 'config.json'}: {e}") from None
    else:
        kinds = dict.fromkeys(linears, (n_bits, group_size, symmetric))
    _check_file(path, header, model, layout, kinds)
    rest: dict[str, torch.Tensor] = {}
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: safetensors cannot open it ({e})") from e

    def get(key: str) -> torch.Tensor:
        try:
            return f.get_tensor(key)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: tensor {key!r} cannot be read ({e})") from e

    with f:
        for name in linears:
            part = {k[len(name) + 1:]: get(k) for k in header if k.startswith(name + ".")}
            n_bits, group_size, _ = kinds[name]
            try:
                buffers = layout.to_w4a16(part, n_bits, group_size)
                if "bias" in part:
                    buffers["bias"] = part["bias"]
                module = W4A16Linear.from_tensors(buffers, n_bits, group_size)
            except ValueError as e:
                raise ValueError(f"{path}: layer {name}: {e}") from e
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)
        packed = {k for k in header for n in linears if k.startswith(n + ".")}
        rest = {k: get(k) for k in header.keys() - packed}
    model.load_state_dict(rest, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    rotary = model.model.rotary_emb  # its inv_freq is computed, not saved
    model.model.rotary_emb = type(rotary)(config=config)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(f"{path}: tensors missing from the checkpoint, e.g. {meta[0]}")
    return model.to(device).eval()
