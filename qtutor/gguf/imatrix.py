"""llama.cpp's importance matrix: the mean of x² of every input column of every matmul.

What ``llama-imatrix`` computes (``tools/imatrix/imatrix.cpp`` of llama-cpp-python
0.3.36's vendored llama.cpp, ``IMatrixCollector::collect_imatrix``): for each weight
tensor ``W`` (out, in) and each token's activation ``x`` (in,) entering ``W @ x``, it adds
``x[j]²`` to ``values[j]`` and counts the token (``counts += ggml_nrows(src1)``).  The file
stores both (``<tensor>.in_sum2`` and ``<tensor>.counts`` in a GGUF of ``general.type =
imatrix``), and ``llama-quantize`` divides them (``tools/quantize/quantize.cpp``) to get the
importances it passes as ``quant_weights``: ``importance[j] = values[j] / counts``.

Here the activations come from forward pre-hooks on the decoder linears of the float
model, and tensors are named as in a GGUF (``blk.3.ffn_down.weight``).  llama.cpp adds in
float32 token by token; this sums in float64, so the last bits of an importance can differ
from the tool's (its activations come from another engine anyway): the *quantizers* that
consume it are the byte-identical part (:mod:`qtutor.gguf.weighted`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from torch import nn

from ..model import decoder_linears
from .io import _HF_TO_GGUF

__all__ = ["Imatrix", "compute_imatrix", "gguf_name", "write_imatrix", "read_imatrix"]


@dataclass(frozen=True)
class Imatrix:
    """Per-tensor sums of x² over tokens (``in_sum2``) and the number of tokens (``counts``)."""

    sums: dict[str, np.ndarray]  # GGUF tensor name -> (in_features,) float64
    counts: dict[str, int]

    def importance(self, name: str) -> np.ndarray:
        """``sums / counts`` as float32: the ``quant_weights`` llama-quantize passes for ``name``."""
        return (self.sums[name].astype(np.float32) / np.float32(self.counts[name])).astype(np.float32)

    def __len__(self) -> int:
        return len(self.sums)


def gguf_name(hf_linear: str) -> str:
    """``model.layers.3.mlp.down_proj`` -> ``blk.3.ffn_down.weight``."""
    _, _, i, module = hf_linear.split(".", 3)
    return f"blk.{i}.{_HF_TO_GGUF[module]}.weight"


@torch.no_grad()
def compute_imatrix(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 4) -> Imatrix:
    """Run ``model`` over ``input_ids`` (n_samples, seq_len) and accumulate x² per input column.

    Every token of every sample counts once for every decoder linear (q, k and v see the same
    activations, and so get the same importances, as in llama.cpp).
    """
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be int64 (n_samples, seq_len), got {input_ids.dtype} {tuple(input_ids.shape)}")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, in_features)
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    linears = {gguf_name(n): m for n, m in decoder_linears(model).items()}
    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in linears.items()]
    device = next(model.parameters()).device
    try:
        for batch in input_ids.split(batch_size):
            model(batch.to(device))
    finally:
        for h in hooks:
            h.remove()
    return Imatrix({n: sums[n].cpu().numpy() for n in linears}, {n: counts[n] for n in linears})


def write_imatrix(path: str | os.PathLike, imatrix: Imatrix, dataset: str, chunk_size: int) -> None:
    """Write llama.cpp's GGUF imatrix file: ``<name>.in_sum2`` (1, in) and ``<name>.counts`` (1, 1), float32."""
    writer = gguf.GGUFWriter(path, arch="")
    writer.kv_data[0].pop("general.architecture", None)  # an imatrix file has no architecture key
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [dataset])
    writer.add_uint32("imatrix.chunk_count", max(imatrix.counts.values()) // chunk_size)
    writer.add_uint32("imatrix.chunk_size", chunk_size)
    for name in imatrix.sums:
        writer.add_tensor(f"{name}.in_sum2", imatrix.sums[name].astype(np.float32)[None, :])
        writer.add_tensor(f"{name}.counts", np.array([[imatrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read a GGUF imatrix file (as ``llama-imatrix`` writes it) back into an :class:`Imatrix`."""
    reader = gguf.GGUFReader(path)
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32).reshape(-1).astype(np.float64)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = int(np.asarray(t.data).reshape(-1)[0])
    if sums.keys() != counts.keys():
        raise ValueError(f"{path}: in_sum2 and counts name different tensors")
    return Imatrix(sums, counts)
