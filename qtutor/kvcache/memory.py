"""How much memory the key-value cache takes, per token and at a context length, against the weights.

Per token and per layer a decoder stores one key and one value vector per *KV* head (grouped-query
attention shares them between query heads), so

    KV bits per token = 2 · n_layers · n_kv_heads · head_dim · (bits + overhead),

where ``overhead`` is the metadata per element of a quantized cache: a 16-bit scale and a 16-bit
zero-point (KIVI stores the minimum) per group of ``group_size`` elements, i.e. 32 / group_size
bits per element (none for a float cache; an FP8 cache with one float scale per head and layer
has a negligible one, counted as none). The cache grows linearly with context and batch; the
weights do not, so past some context length the cache is the larger of the two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ModelShape", "KVFormat", "FP16", "MODEL_SHAPES", "kv_bytes_per_token", "cache_bytes", "weight_bytes",
           "crossover_context"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return value


@dataclass(frozen=True)
class ModelShape:
    """What the cache size depends on, plus the parameter count for the weights beside it."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_params: int

    def __post_init__(self) -> None:
        for field in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "n_params"):
            _positive_int(field, getattr(self, field))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                             "(each KV head serves a whole group of query heads)")

    @classmethod
    def from_config(cls, config, n_params: int, name: str | None = None) -> "ModelShape":
        """From a transformers Llama-style config (``num_hidden_layers``, ``num_attention_heads``, …)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(name or getattr(config, "name_or_path", "") or "model", config.num_hidden_layers, heads,
                   getattr(config, "num_key_value_heads", None) or heads, head_dim, n_params)


@dataclass(frozen=True)
class KVFormat:
    """A cache format: ``bits`` per element, and for integer formats a 16-bit scale and zero-point per group."""

    name: str
    bits: int
    group_size: int | None = None  # None: no per-group metadata (float, or FP8 with a per-head scale)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (2, 4, 8, 16, 32):
            raise ValueError(f"bits={self.bits!r}: a KV cache element is 2, 4, 8, 16 or 32 bits")
        if self.group_size is not None:
            _positive_int("group_size", self.group_size)
            if self.bits >= 16:
                raise ValueError(f"group_size={self.group_size}: a {self.bits}-bit float cache has no groups")

    @property
    def bits_per_element(self) -> float:
        return self.bits + (32 / self.group_size if self.group_size else 0.0)


FP16 = KVFormat("fp16", 16)

# Public architectures (config.json of each): layers, heads, KV heads, head dim, parameters.
MODEL_SHAPES = {
    "Llama-3-8B": ModelShape("Llama-3-8B", 32, 32, 8, 128, 8_030_261_248),
    "Llama-3-70B": ModelShape("Llama-3-70B", 80, 64, 8, 128, 70_553_706_496),
}


def kv_bytes_per_token(shape: ModelShape, fmt: KVFormat = FP16) -> float:
    """Bytes of K and V for one token across all layers (one sequence)."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * fmt.bits_per_element / 8


def cache_bytes(shape: ModelShape, context: int, fmt: KVFormat = FP16, batch: int = 1) -> float:
    """Bytes of the whole cache: ``batch`` sequences of ``context`` tokens."""
    _positive_int("context", context)
    _positive_int("batch", batch)
    return kv_bytes_per_token(shape, fmt) * context * batch


def weight_bytes(shape: ModelShape, bits_per_weight: float) -> float:
    """Bytes of all parameters at ``bits_per_weight`` (scales included in that number)."""
    if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, (int, float)) \
            or not math.isfinite(bits_per_weight) or bits_per_weight <= 0:
        raise ValueError(f"bits_per_weight={bits_per_weight!r}: must be a finite number > 0")
    return shape.n_params * bits_per_weight / 8


def crossover_context(shape: ModelShape, bits_per_weight: float, fmt: KVFormat = FP16, batch: int = 1) -> int:
    """The smallest context length at which the cache takes more bytes than the weights."""
    _positive_int("batch", batch)
    return math.floor(weight_bytes(shape, bits_per_weight) / (kv_bytes_per_token(shape, fmt) * batch)) + 1
