"""Write and read GGUF files: quantize a float model into a file llama.cpp and transformers load.

Metadata come from the model's config and the tokenizer (a byte-level BPE
tokenizer, as Llama-3 and SmolLM use: its tokens, merges and special tokens),
or are copied from a *template* GGUF of the same architecture.  Tensors come
from a float Hugging Face Llama model, renamed to GGUF names and — for q/k —
permuted back to the interleaved RoPE layout that GGUF uses (the inverse of
what transformers does when it loads a GGUF).  The file is written to a temporary
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


class _CheckedReader(gguf.GGUFReader):
    """gguf-py's reader, but a tensor reaching past the end of the file is named before numpy fails."""

    def _build_tensors(self, start_offs: int, fields) -> None:
        size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_dtype, offset_tensor = field.parts
            qtype = gguf.GGMLQuantizationType(raw_dtype[0])
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            start = int(start_offs + offset_tensor[0])
            end = start + int(np.prod(dims)) * type_size // block
            if end > size:
                name = bytes(name_data).decode("utf-8", "replace")
                raise GGUFFormatError(
                    f"{self._path}: truncated — tensor {name!r} ({qtype.name}) needs bytes {start}..{end} "
                    f"but the file has {size}"
                )
        super()._build_tensors(start_offs, fields)

    def __init__(self, path, mode="r"):
        self._path = path
        super().__init__(path, mode)


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
        reader = _CheckedReader(path)
    except GGUFFormatError:
        raise
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


def _check_types(types: dict[str, str], tensors: dict[str, np.ndarray]) -> None:
    from .file_types import block_size

    if not isinstance(types, dict):
        raise ValueError(f"types must be a dict {{GGUF tensor name: type}}, got {type(types).__name__}")
    allowed = LEGACY_TYPES + KQUANT_TYPES + ("F16", "F32")
    for name, t in types.items():
        if name not in tensors or tensors[name].ndim != 2:
            weights = sorted(n for n, a in tensors.items() if a.ndim == 2)
            raise ValueError(f"types[{name!r}]: not a 2-D weight of this model's GGUF (e.g. {weights[0]!r}, "
                             f"{weights[-1]!r})")
        if t not in allowed:
            raise ValueError(f"types[{name!r}] = {t!r}: allowed {', '.join(allowed)}")
        row = tensors[name].shape[-1]
        if row % block_size(t):
            raise ValueError(f"types[{name!r}] = {t!r}: its rows of {row} are not a multiple of {t}'s block of "
                             f"{block_size(t)} weights; choose a type with 32-weight blocks (Q4_0 … Q8_0)")


def _hf_metadata(writer: gguf.GGUFWriter, model: torch.nn.Module, tokenizer, pre: str) -> None:
    """Architecture keys from the config, tokenizer keys from a byte-level BPE tokenizer."""
    import json

    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_name(Path(str(getattr(cfg, "_name_or_path", "") or "llama")).name)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or spec.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ValueError("only byte-level BPE tokenizers are converted; pass template= a GGUF of the same model")
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for key, tok in (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token), ("unk", tokenizer.unk_token),
                     ("pad", tokenizer.pad_token)):
        if tok is not None:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                             "pad": "add_pad_token_id"}[key])(vocab[tok])
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(
    model: torch.nn.Module,
    path: str | os.PathLike,
    file_type: str,
    tokenizer=None,
    template: str | os.PathLike | None = None,
    pre: str = "default",
    types: dict[str, str] | None = None,
) -> dict[str, str]:
    """Quantize ``model`` to ``file_type`` and write a complete GGUF to ``path``.

    Args:
        model: a float Hugging Face Llama-family model.
        path: the ``.gguf`` to write (written under a temporary name, then renamed).
        file_type: one of :data:`~qtutor.gguf.FILE_TYPES` ("Q4_K_M", …).
        tokenizer: the model's Hugging Face tokenizer (byte-level BPE), for the tokenizer metadata.
        template: instead of ``tokenizer``, a GGUF whose metadata and tokenizer are copied.
        pre: llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``), e.g. "smollm", "llama-bpe".
        types: per-tensor overrides ``{GGUF tensor name: type}`` (e.g. ``{"blk.0.attn_v.weight": "Q8_0"}``), for a
            mixture of one's own, as ``llama-quantize --tensor-type`` sets them; every other tensor follows
            ``file_type``'s rules. Checked before anything is written: the name must be a 2-D weight of the model,
            the type one qtutor encodes, and its block must divide the tensor's rows.

    Returns ``{tensor name: type}`` — llama.cpp's choice for each tensor, fallbacks and overrides included.
    """
    ftype_id = LLAMA_FTYPE[file_type][0] if file_type in LLAMA_FTYPE else base_type(file_type)
    if (tokenizer is None) == (template is None):
        raise ValueError("pass exactly one of tokenizer= (metadata from the model) or template= (copied from a GGUF)")
    tensors = gguf_tensors_from_hf(model)
    _check_types(types or {}, tensors)
    src = read_gguf(template) if template is not None else None
    arch = src.fields["general.architecture"].contents() if src is not None else "llama"
    cfg = model.config
    n_gqa = cfg.num_attention_heads // cfg.num_key_value_heads
    tied = "output.weight" not in tensors
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    chosen: dict[str, str] = {}
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        if src is not None:
            for name, field in src.fields.items():
                if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
                    continue
                sub = field.types[1] if len(field.types) > 1 else None
                writer.add_key_value(name, field.contents(), field.types[0], sub)
        else:
            _hf_metadata(writer, model, tokenizer, pre)
        writer.add_file_type(ftype_id)
        # llama.cpp's order: tensors outside the blocks first, then block by block, by name
        def order(n: str):
            parts = n.split(".")
            return (int(parts[1]) if parts[0] == "blk" else -1, n)

        for name in sorted(tensors, key=order):
            a = tensors[name]
            gguf_shape = tuple(reversed(a.shape))  # GGUF lists the row length first
            t = (types or {}).get(name) or choose_tensor_type(name, gguf_shape, file_type, cfg.num_hidden_layers,
                                                              n_gqa, tied)
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
