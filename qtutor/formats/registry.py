"""The checkpoint layouts as objects, in one registry: ``LAYOUTS[name]`` packs, unpacks, describes and checks.

Each layout knows

* ``pack(qw, symmetric)`` / ``unpack(tensors, n_bits, group_size)``: one layer, both ways
  (the bit-level work is in :mod:`qtutor.formats.layouts`);
* ``quantization_config(...)``: the ``quantization_config`` block other tools read, and
  ``parse(qconfig)``, its inverse (``(n_bits, group_size, symmetric)``);
* ``expected(out, in, ...)``: every tensor one layer stores, with its dtypes and shape,
  so that a loader can check a file before reading it;
* ``to_w4a16(tensors, ...)``: the layer's tensors in :class:`qtutor.nn.W4A16Linear`'s
  (GPTQ-v2) layout — the stored tensors themselves where the layout is the same, tensor
  operations on the packed words where it differs; never a full unpack and repack
  through :func:`pack_gptq`.
"""
from __future__ import annotations

import json
import re

from dataclasses import dataclass

import torch

from ..primitives.grid import QuantizedWeight, n_groups
from .layouts import (
    _deinterleave, _pack_rows, _unpack_dense, _unpack_rows, pack_awq, pack_compressed_tensors, pack_gptq, unpack_awq,
    unpack_compressed_tensors, unpack_gptq,
)

__all__ = ["Layout", "GPTQLayout", "AWQLayout", "CompressedTensorsLayout", "LAYOUTS", "layout_for"]

Spec = dict[str, tuple[tuple[torch.dtype, ...], tuple[int, ...]]]  # tensor name -> (allowed dtypes, shape)
_SCALES = (torch.float16, torch.bfloat16, torch.float32)
_INTS = (torch.int32, torch.int64)


def _group_size_of(gs: object) -> int | None:
    if gs in (-1, None):
        return None
    if isinstance(gs, bool) or not isinstance(gs, int) or gs < 1:
        raise ValueError(f"group_size={gs!r} in quantization_config: must be a positive integer or -1")
    return gs


def _bits_of(bits: object, allowed: tuple[int, ...]) -> int:
    if isinstance(bits, bool) or bits not in allowed:
        raise ValueError(f"bits={bits!r} in quantization_config: this layout stores {allowed}")
    return bits  # type: ignore[return-value]


@dataclass(frozen=True)
class GPTQLayout:
    """AutoGPTQ/GPTQModel ``qweight``/``qzeros``/``scales``/``g_idx``; ``version`` 1 stores ``zero − 1``."""

    version: int = 1

    @property
    def name(self) -> str:
        return "gptq" if self.version == 1 else "gptq_v2"

    def pack(self, qw: QuantizedWeight, symmetric: bool = False) -> dict[str, torch.Tensor]:
        return pack_gptq(qw, version=self.version)

    def unpack(self, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> QuantizedWeight:
        return unpack_gptq(tensors, n_bits, group_size, version=self.version)

    def quantization_config(self, n_bits: int, group_size: int | None, act_order: bool, symmetric: bool) -> dict:
        return {"quant_method": "gptq", "bits": n_bits, "group_size": -1 if group_size is None else group_size,
                "desc_act": act_order, "sym": symmetric, "true_sequential": True, "checkpoint_format": self.name}

    def parse(self, qconfig: dict) -> tuple[int, int | None, bool]:
        return _bits_of(qconfig.get("bits"), (2, 4, 8)), _group_size_of(qconfig.get("group_size")), bool(qconfig.get("sym"))

    def expected(self, out_features: int, in_features: int, n_bits: int, group_size: int | None,
                 symmetric: bool) -> Spec:
        per, groups = 32 // n_bits, n_groups(in_features, group_size)
        return {"qweight": ((torch.int32,), (in_features // per, out_features)),
                "qzeros": ((torch.int32,), (groups, out_features // per)),
                "scales": (_SCALES, (groups, out_features)),
                "g_idx": ((torch.int32,), (in_features,))}

    def to_w4a16(self, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> dict[str, torch.Tensor]:
        out = {k: tensors[k] for k in ("qweight", "qzeros", "scales", "g_idx")}
        if self.version == 1:  # v1 stores zero − 1 mod 2ᵇ: add the 1 back, field by field, on the small qzeros only
            zeros = _unpack_rows(tensors["qzeros"].T.contiguous(), n_bits).to(torch.int64)  # (out, n_groups)
            out["qzeros"] = _pack_rows((zeros + 1) & (2**n_bits - 1), n_bits).T.contiguous()  # (n_groups, out·b/32)
        return out


@dataclass(frozen=True)
class AWQLayout:
    """AutoAWQ GEMM: 4-bit codes packed along the output dimension in the order 0 2 4 6 1 3 5 7."""

    name: str = "awq"

    def pack(self, qw: QuantizedWeight, symmetric: bool = False) -> dict[str, torch.Tensor]:
        return pack_awq(qw)

    def unpack(self, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> QuantizedWeight:
        return unpack_awq(tensors, group_size)

    def quantization_config(self, n_bits: int, group_size: int | None, act_order: bool, symmetric: bool) -> dict:
        return {"quant_method": "awq", "bits": n_bits, "group_size": -1 if group_size is None else group_size,
                "zero_point": True, "version": "gemm"}

    def parse(self, qconfig: dict) -> tuple[int, int | None, bool]:
        if str(qconfig.get("version", "gemm")).lower() != "gemm":
            raise ValueError(f"version={qconfig.get('version')!r} in quantization_config: qtutor reads AWQ's GEMM layout")
        return _bits_of(qconfig.get("bits", qconfig.get("w_bit")), (4,)), \
            _group_size_of(qconfig.get("group_size", qconfig.get("q_group_size"))), False

    def expected(self, out_features: int, in_features: int, n_bits: int, group_size: int | None,
                 symmetric: bool) -> Spec:
        groups = n_groups(in_features, group_size)
        return {"qweight": ((torch.int32,), (in_features, out_features // 8)),
                "qzeros": ((torch.int32,), (groups, out_features // 8)),
                "scales": (_SCALES, (groups, out_features))}

    def to_w4a16(self, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> dict[str, torch.Tensor]:
        # the codes move from output-packed (interleaved) to input-packed words: a layout change, done on words
        q = _deinterleave(_unpack_rows(tensors["qweight"].T.contiguous(), 4).T)  # (in, out)
        z = _deinterleave(_unpack_rows(tensors["qzeros"].T.contiguous(), 4).T)  # (n_groups, out)
        in_features = q.shape[0]
        return {"qweight": _pack_rows(q, 4),  # (in/8, out)
                "qzeros": _pack_rows(z.T.contiguous(), 4).T.contiguous(),  # (n_groups, out/8)
                "scales": tensors["scales"],
                "g_idx": (torch.arange(in_features) // (group_size or in_features)).to(torch.int32)}


@dataclass(frozen=True)
class CompressedTensorsLayout:
    """llm-compressor / vLLM ``pack-quantized``: signed codes packed densely along each row."""

    name: str = "compressed-tensors"

    def pack(self, qw: QuantizedWeight, symmetric: bool = False) -> dict[str, torch.Tensor]:
        return pack_compressed_tensors(qw, symmetric=symmetric)

    def unpack(self, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> QuantizedWeight:
        return unpack_compressed_tensors(tensors, n_bits, group_size)

    def quantization_config(self, n_bits: int, group_size: int | None, act_order: bool, symmetric: bool) -> dict:
        weights = {"num_bits": n_bits, "type": "int", "symmetric": symmetric, "dynamic": False,
                   "strategy": "group" if group_size is not None else "channel", "group_size": group_size}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                              "output_activations": None, "format": "pack-quantized"}},
                "ignore": ["lm_head"]}

    def mixed_quantization_config(self, kinds: dict[str, tuple[int, int | None]], symmetric: bool) -> dict:
        """One config group per ``(n_bits, group_size)``, each targeting its layers by their exact names (the form
        llm-compressor writes for a per-layer recipe; compressed-tensors matches a target equal to a module's name)."""
        by_kind: dict[tuple[int, int | None], list[str]] = {}
        for name, kind in kinds.items():
            by_kind.setdefault(kind, []).append(name)
        config = self.quantization_config(*next(iter(sorted(by_kind, key=str))), False, symmetric)
        groups = {}
        for i, kind in enumerate(sorted(by_kind, key=lambda k: (k[0], k[1] or 0))):
            group = json.loads(json.dumps(config["config_groups"]["group_0"]))
            group["weights"] |= {"num_bits": kind[0], "group_size": kind[1],
                                 "strategy": "group" if kind[1] is not None else "channel"}
            group["targets"] = sorted(by_kind[kind])
            groups[f"group_{i}"] = group
        return config | {"config_groups": groups}

    def layer_kinds(self, qconfig: dict, names: list[str]) -> dict[str, tuple[int, int | None, bool]]:
        """``{layer: (n_bits, group_size, symmetric)}`` from the config groups, for every name in ``names``."""
        groups = qconfig.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise ValueError("quantization_config has no config_groups")
        kinds: dict[str, tuple[int, int | None, bool]] = {}
        for gname, group in groups.items():
            weights = group.get("weights") if isinstance(group, dict) else None
            targets = group.get("targets") if isinstance(group, dict) else None
            if not isinstance(weights, dict) or not isinstance(targets, list):
                raise ValueError(f"config_groups.{gname} needs weights and a list of targets")
            kind = (_bits_of(weights.get("num_bits"), (2, 3, 4, 5, 6, 7, 8)), _group_size_of(weights.get("group_size")),
                    bool(weights.get("symmetric")))
            for name in names:
                if any(t == "Linear" or t == name or (t.startswith("re:") and re.match(t[3:], name)) for t in targets):
                    if name in kinds and kinds[name] != kind:
                        raise ValueError(f"{name} is targeted by two config groups with different schemes")
                    kinds[name] = kind
        missing = [n for n in names if n not in kinds]
        if missing:
            raise ValueError(f"no config group targets {missing[0]} ({len(missing)} decoder linears untargeted)")
        return kinds

    def parse(self, qconfig: dict) -> tuple[int, int | None, bool]:
        try:
            weights = qconfig["config_groups"]["group_0"]["weights"]
        except (KeyError, TypeError):
            raise ValueError("quantization_config has no config_groups.group_0.weights") from None
        return _bits_of(weights.get("num_bits"), (2, 3, 4, 5, 6, 7, 8)), _group_size_of(weights.get("group_size")), \
            bool(weights.get("symmetric"))

    def expected(self, out_features: int, in_features: int, n_bits: int, group_size: int | None,
                 symmetric: bool) -> Spec:
        groups = n_groups(in_features, group_size)
        spec = {"weight_packed": ((torch.int32,), (out_features, -(-in_features * n_bits // 32))),
                "weight_scale": (_SCALES, (out_features, groups)),
                "weight_shape": (_INTS, (2,))}
        if not symmetric:
            spec["weight_zero_point"] = ((torch.int32,), (-(-out_features * n_bits // 32), groups))
        return spec

    def to_w4a16(self, tensors: dict[str, torch.Tensor], n_bits: int, group_size: int | None) -> dict[str, torch.Tensor]:
        out_features, in_features = (int(v) for v in tensors["weight_shape"])
        q = _unpack_dense(tensors["weight_packed"], n_bits, in_features)  # (out, in)
        groups = n_groups(in_features, group_size)
        if "weight_zero_point" in tensors:
            zero = _unpack_dense(tensors["weight_zero_point"].T.contiguous(), n_bits, out_features)  # (n_groups, out)
        else:
            zero = torch.full((groups, out_features), 2 ** (n_bits - 1), dtype=torch.uint8)
        return {"qweight": _pack_rows(q.T.contiguous(), n_bits),  # (in·b/32, out)
                "qzeros": _pack_rows(zero.T.contiguous(), n_bits).T.contiguous(),  # (n_groups, out·b/32)
                "scales": tensors["weight_scale"].T.contiguous(),  # (n_groups, out)
                "g_idx": (torch.arange(in_features) // (group_size or in_features)).to(torch.int32)}


Layout = GPTQLayout | AWQLayout | CompressedTensorsLayout

LAYOUTS: dict[str, Layout] = {
    "gptq": GPTQLayout(version=1),
    "gptq_v2": GPTQLayout(version=2),
    "awq": AWQLayout(),
    "compressed-tensors": CompressedTensorsLayout(),
}


def layout_for(qconfig: dict) -> tuple[Layout, int, int | None, bool]:
    """The layout a ``quantization_config`` describes and its ``(n_bits, group_size, symmetric)``."""
    if not isinstance(qconfig, dict):
        raise ValueError(f"quantization_config must be an object, got {type(qconfig).__name__}")
    method = qconfig.get("quant_method")
    if method == "gptq":
        name = qconfig.get("checkpoint_format", "gptq")
        if name not in ("gptq", "gptq_v2"):
            raise ValueError(f"checkpoint_format={name!r}: qtutor reads 'gptq' (v1) and 'gptq_v2'")
    elif method in ("awq", "compressed-tensors"):
        name = method
    else:
        raise ValueError(f"quant_method={method!r}: qtutor reads gptq, awq and compressed-tensors checkpoints")
    layout = LAYOUTS[name]
    return (layout, *layout.parse(qconfig))
