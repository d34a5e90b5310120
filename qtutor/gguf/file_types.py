"""llama.cpp's per-tensor type choices for a file type ("Q4_K_M" …), for a dense Llama model.

Follows ``llama_tensor_get_type`` in ``src/llama-quant.cpp`` of the llama.cpp
vendored by llama-cpp-python 0.3.36, restricted to the branches a dense Llama
reaches (no experts, not Falcon, no importance matrix, no user overrides):

* norms and other 1-D tensors stay F32;
* the output matrix — or the token embedding when it is tied to the output,
  as in SmolLM2 — is Q6_K, or Q8_0 when its rows do not split into 256-blocks;
* ``attn_v`` and ``ffn_down`` get more bits in some layers (``use_more_bits``:
  the first and last eighth, and every third layer between);
* finally, a k-quant whose 256-wide super-block does not divide the row length
  falls back: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0.
"""
from __future__ import annotations

import re

__all__ = ["FILE_TYPES", "LLAMA_FTYPE", "base_type", "choose_tensor_type", "block_size"]

# file type -> (llama_ftype number for general.file_type, default tensor type)
LLAMA_FTYPE = {
    "Q8_0": (7, "Q8_0"), "Q2_K": (10, "Q2_K"), "Q3_K_M": (12, "Q3_K"), "Q4_K_S": (14, "Q4_K"),
    "Q4_K_M": (15, "Q4_K"), "Q5_K_M": (17, "Q5_K"), "Q6_K": (18, "Q6_K"),
}
FILE_TYPES = tuple(LLAMA_FTYPE)
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def block_size(type_name: str) -> int:
    """Weights per block: 256 for the k-quants, 32 for Q4_0…Q8_0, 1 for floats."""
    if type_name.endswith("_K"):
        return 256
    return 1 if type_name in ("F32", "F16") else 32


def base_type(file_type: str) -> str:
    """The default tensor type of a file type; raises with the valid names otherwise."""
    if file_type not in LLAMA_FTYPE:
        raise ValueError(f"unknown file type {file_type!r}: valid types are {', '.join(FILE_TYPES)}")
    return LLAMA_FTYPE[file_type][1]


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def choose_tensor_type(name: str, shape: tuple[int, ...], file_type: str, n_layer: int, n_gqa: int,
                       tied_embeddings: bool) -> str:
    """GGML type of tensor ``name`` (GGUF name, ``shape`` in GGUF order: row length first)."""
    new = base_type(file_type)
    if len(shape) < 2 or not name.endswith(".weight"):
        return "F32"
    ncols = shape[0]
    m = re.match(r"blk\.(\d+)\.", name)
    i = int(m.group(1)) if m else -1
    if name == "output.weight" or (tied_embeddings and name == "token_embd.weight"):
        new = "Q8_0" if ncols % block_size(new) else ("Q8_0" if new == "Q8_0" else "Q6_K")
    elif name.endswith("attn_v.weight"):
        if file_type == "Q2_K":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif file_type == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n_layer):
            new = "Q6_K"
        elif file_type == "Q4_K_S" and i < 4:
            new = "Q5_K"
    elif name.endswith("ffn_down.weight"):
        if file_type == "Q2_K":
            new = "Q3_K"
        elif file_type == "Q3_K_M":
            new = "Q5_K" if i < n_layer // 16 else "Q4_K"
        elif file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n_layer):
            new = "Q6_K"
        elif file_type == "Q4_K_S" and i < n_layer // 8:
            new = "Q5_K"
    elif name.endswith("attn_output.weight"):
        new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K"}.get(file_type, new)
    if ncols % block_size(new):
        new = _FALLBACK.get(new, new)
        if ncols % block_size(new):
            new = "F16"
    return new
