"""GGUF mixtures chosen by measurement: GGML types as allocator options, and llama.cpp's hand-written ones.

llama.cpp's ``Q4_K_M`` is an allocator written by hand (``llama_tensor_get_type``, ported in
:mod:`qtutor.gguf.file_types`): a default type, more bits for ``attn_v`` and ``ffn_down`` in some layers,
and a fallback when a row does not split into 256-weight super-blocks. This module lets
:func:`qtutor.diagnose.allocate.allocate` choose one GGML type per decoder linear instead, from a measured
damage map, at the same size:

* :class:`GGMLType` — an allocator option whose ``bits(out, in)`` is the exact size of the tensor's
  blocks (``in / block_size`` blocks per row, each ``type_size`` bytes: the bytes a GGUF file stores);
* :func:`ggml_options` — the types whose block divides a row length;
* :func:`file_type_types` — llama.cpp's choice for every decoder linear under a file type;
* :func:`allocate_ggml` — the allocation, with each layer limited to the types that fit its rows;
* :func:`ggml_mixed` — a model whose decoder linears hold their encode → decode round trips
  (qtutor's byte-identical ports of ggml-quants.c), restored on exit.

The embedding, the norms and the output matrix are left to the caller: both sides of a comparison
should store them the same way.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from torch import nn

from ..gguf.file_types import block_size, choose_tensor_type
from ..gguf.imatrix import gguf_name
from ..gguf.io import dequantize_tensor, quantize_tensor
from ..gguf.kquants import KQUANT_TYPES
from ..gguf.legacy import LEGACY_TYPES
from ..model.walk import decoder_linears
from .allocate import Allocation, allocate, swapped_weights

__all__ = ["GGMLType", "GGML_TYPES", "ggml_options", "file_type_types", "allocate_ggml", "ggml_mixed",
           "mixture_bits"]

GGML_TYPES: tuple[str, ...] = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


@dataclass(frozen=True)
class GGMLType:
    """One GGML block type as an allocator option (``label`` is its name, ``bits`` its stored size)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in LEGACY_TYPES + KQUANT_TYPES:
            raise ValueError(f"GGML type {self.name!r}: allowed {', '.join(LEGACY_TYPES + KQUANT_TYPES)}")

    @property
    def label(self) -> str:
        return self.name

    @property
    def block(self) -> int:
        return block_size(self.name)

    @property
    def bytes_per_block(self) -> int:
        return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.name]][1])

    def fits(self, in_features: int) -> bool:
        return in_features % self.block == 0

    def bits(self, out_features: int, in_features: int) -> int:
        """Exact storage of an (out, in) weight in this type, in bits (rows of ``in`` weights in blocks)."""
        if not self.fits(in_features):
            raise ValueError(f"{self.name}: rows of {in_features} weights do not split into blocks of {self.block}")
        return out_features * (in_features // self.block) * self.bytes_per_block * 8


def ggml_options(in_features: int, types: Sequence[str] = GGML_TYPES) -> list[GGMLType]:
    """The types among ``types`` whose block divides a row of ``in_features`` weights."""
    return [GGMLType(t) for t in types if GGMLType(t).fits(in_features)]


def file_type_types(model: nn.Module, file_type: str) -> dict[str, str]:
    """``{decoder linear: GGML type}`` as llama.cpp's ``llama-quantize`` chooses them for ``file_type``."""
    cfg = model.config
    n_gqa = cfg.num_attention_heads // cfg.num_key_value_heads
    return {n: choose_tensor_type(gguf_name(n), (m.in_features, m.out_features), file_type, cfg.num_hidden_layers,
                                  n_gqa, bool(cfg.tie_word_embeddings))
            for n, m in decoder_linears(model).items()}


def mixture_bits(shapes: Mapping[str, tuple[int, int]], types: Mapping[str, str]) -> int:
    """Exact bits of the decoder linears stored as ``types`` (``{layer: GGML type}``)."""
    missing = [n for n in shapes if n not in types]
    if missing:
        raise ValueError(f"types has no entry for layer {missing[0]!r} ({len(missing)} layers missing)")
    return sum(GGMLType(types[n]).bits(*shapes[n]) for n in shapes)


def allocate_ggml(damage: Mapping[str, Mapping[str, float]], shapes: Mapping[str, tuple[int, int]], budget: float,
                  types: Sequence[str] = GGML_TYPES) -> Allocation:
    """One GGML type per layer among ``types`` (those whose block fits its rows) minimising summed damage.

    ``damage`` is ``{layer: {type name: damage}}`` (e.g. the KL of that layer alone in that type);
    ``budget`` in bits per weight of the decoder linears, stored bytes exactly. The allocation's
    ``schemes`` are :class:`GGMLType` values. Sizes are exact (GGML blocks share a large unit), so at a
    competitor mixture's own size the result never sums to more damage than that mixture.
    """
    options = [GGMLType(t) for t in dict.fromkeys(types)]
    allowed = {n: [o for o in options if o.fits(i)] for n, (_, i) in shapes.items()}
    empty = [n for n, a in allowed.items() if not a]
    if empty:
        raise ValueError(f"layer {empty[0]!r} (rows of {shapes[empty[0]][1]}): none of {list(types)} splits its rows")
    by_option = {}
    for n in shapes:
        if n not in damage:
            raise ValueError(f"damage has no entry for layer {n!r}")
        by_option[n] = {o: float(damage[n][o.name]) for o in allowed[n] if o.name in damage[n]}
        absent = [o.name for o in allowed[n] if o.name not in damage[n]]
        if absent:
            raise ValueError(f"damage[{n!r}] has no value for {absent[0]}, which fits its rows")
    return allocate(by_option, shapes, budget, schemes=options, allowed=allowed, exact_sizes=True)


@contextmanager
def ggml_mixed(model: nn.Module, types: Mapping[str, str]) -> Iterator[nn.Module]:
    """Inside the block, each named decoder linear holds the decoded GGML ``types[name]`` round trip.

    Every type is checked and every weight encoded before any is replaced, and the float weights are
    restored on exit (also on error). Rows are encoded as the Hugging Face layout holds them: GGUF permutes
    q/k rows, and a row-wise block quantizer commutes with a row permutation, so the result is the same.
    """
    linears = decoder_linears(model)
    unknown = [n for n in types if n not in linears]
    if unknown:
        raise ValueError(f"types names {unknown[0]!r}, which is not a decoder linear of this model "
                         f"({len(unknown)} unknown names)")
    new = {}
    for n, t in types.items():
        opt = GGMLType(t)
        w = linears[n].weight.detach()
        if not opt.fits(w.shape[1]):
            raise ValueError(f"types[{n!r}] = {t!r}: rows of {w.shape[1]} weights do not split into blocks of "
                             f"{opt.block}; types that fit: {[o.name for o in ggml_options(w.shape[1])]}")
        a = w.float().cpu().numpy()
        back = dequantize_tensor(quantize_tensor(a, t), t, a.shape[1])
        new[n] = torch.from_numpy(np.ascontiguousarray(back)).to(w.device, w.dtype)
    with swapped_weights(linears, new):
        yield model
