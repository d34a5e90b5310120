"""Quantized KV caches that ``model.generate()`` uses: KIVI-style integer codes and FP8 E4M3.

A transformers ``Cache`` holds one layer object per decoder block; each attention call hands its layer the new
key and value states (B, H_kv, t, D) and gets back every key and value it must attend to. The layers here store
old tokens compressed and return them dequantized, so the model computes exactly what it would with a cache
that had rounded those states: the same numerics a fused kernel (``qtutor.kernels.kv_decode``) computes without
ever writing the float copy.

:class:`KIVILayer` (Liu et al. 2024, arXiv:2402.02750): keys per channel over groups of ``group_size`` tokens,
values per token over groups of ``group_size`` channels, and the most recent ``residual`` tokens (up to
``residual + group_size - 1`` of them: tokens are flushed in whole key groups) kept in full precision.
transformers' own ``QuantizedCache`` quantizes both keys and values along one axis and re-quantizes the whole
cache at each flush; this layer appends whole groups, so a token is rounded once.

:class:`FP8Layer`: every token stored as ``torch.float8_e4m3fn`` after dividing by a per-layer scale (1.0 by
default, as vLLM's ``kv_cache_dtype="fp8"`` without calibration), saturating at ±448.

Tokens being processed always attend to themselves in full precision (they are quantized after the call), as in
KIVI's and transformers' implementations; :func:`quantized_cache` builds a ``Cache`` of either layer for a model.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .quant import FP16_MAX, _check_finite, dequantize_keys, dequantize_values, fp8_decode, fp8_encode, \
    quantize_keys, quantize_values

__all__ = ["KIVILayer", "FP8Layer", "quantized_cache", "cache_nbytes", "KV_SETTINGS"]

#: The settings the course compares, by name: (layer class, keyword arguments).
KV_SETTINGS = {
    "int8": ("kivi", dict(bits=8)),
    "int4": ("kivi", dict(bits=4)),
    "int2": ("kivi", dict(bits=2)),
    "fp8": ("fp8", {}),
}


def _check_states(layer, key_states: torch.Tensor, value_states: torch.Tensor, limit: float | None = None) -> None:
    """Every check before the layer changes, so that a rejected update leaves it as it was."""
    for name, t in (("key_states", key_states), ("value_states", value_states)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: expected a tensor (batch, kv_heads, tokens, head_dim), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} has dtype {t.dtype}: a KV cache stores floating-point states")
        _check_finite(t, limit, name)
    if key_states.shape[:3] != value_states.shape[:3]:
        raise ValueError(f"key_states {tuple(key_states.shape)} and value_states {tuple(value_states.shape)} "
                         "differ in batch, heads or tokens")
    if layer.is_initialized and layer._shape is not None:
        B, H, D, Dv = layer._shape
        if (key_states.shape[0], key_states.shape[1], key_states.shape[3], value_states.shape[3]) != (B, H, D, Dv):
            raise ValueError(f"key_states {tuple(key_states.shape)} and value_states {tuple(value_states.shape)} do "
                             f"not continue this cache of batch {B}, {H} KV heads and head_dim {D} (values {Dv})")
    if layer.max_tokens is not None and layer.get_seq_length() + key_states.shape[-2] > layer.max_tokens:
        raise ValueError(f"{layer.get_seq_length()} cached + {key_states.shape[-2]} new tokens exceed "
                         f"max_tokens={layer.max_tokens}")


def _check_max_tokens(max_tokens) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r}: a positive whole number of tokens, or None for no limit")


class _BatchOps:
    """Beam reorder and batch select/repeat through the layer's ``_batch_apply(fn)``, which maps every stored tensor."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._batch_apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._batch_apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._batch_apply(lambda t: t[indices, ...])


class KIVILayer(_BatchOps, DynamicLayer):
    """One decoder block's KIVI cache. ``self.keys`` / ``self.values`` hold the full-precision residual window.

    bits: 2, 4 or 8. group_size: tokens per key scale and channels per value scale (must divide head_dim).
    residual: recent tokens kept unquantized (0 or more). max_tokens: optional capacity, an error past it.
    keys_per_token: group keys per token like the values (an ablation, not KIVI).
    """

    def __init__(self, bits: int = 4, group_size: int = 32, residual: int = 128, max_tokens: int | None = None,
                 keys_per_token: bool = False):
        super().__init__()
        if not isinstance(keys_per_token, bool):
            raise ValueError(f"keys_per_token={keys_per_token!r}: True or False")
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (2, 4, 8):
            raise ValueError(f"bits={bits!r}: a KIVI cache stores 2-, 4- or 8-bit codes")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size={group_size!r}: a positive whole number of tokens/channels")
        if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
            raise ValueError(f"residual={residual!r}: a whole number of tokens, 0 or more")
        _check_max_tokens(max_tokens)
        self.bits, self.group_size, self.residual, self.max_tokens = bits, group_size, residual, max_tokens
        # the ablation KIVI argues against: keys grouped per token like the values (their outlier channels then
        # share a scale with the ordinary channels of the same token)
        self.keys_per_token = keys_per_token
        self._shape = None
        self._clear_quantized()

    def _clear_quantized(self) -> None:
        self.k_codes = self.k_scale = self.k_mn = self.v_codes = self.v_scale = self.v_mn = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        for D in (key_states.shape[-1], value_states.shape[-1]):  # values may have their own head_dim (MLA)
            if D % self.group_size:
                raise ValueError(f"group_size={self.group_size} does not divide head_dim={D}: values are quantized "
                                 f"in groups of channels")
            if self.bits == 2 and D % 4 or self.bits == 4 and D % 2:
                raise ValueError(f"head_dim={D}: {self.bits}-bit codes pack {8 // self.bits} per byte")
        super().lazy_initialization(key_states, value_states)
        self._shape = (key_states.shape[0], key_states.shape[1], key_states.shape[-1], value_states.shape[-1])

    @property
    def n_quantized(self) -> int:
        return 0 if self.k_codes is None else self.k_codes.shape[-2]

    def _dequantized(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.k_codes is None:
            return None
        deq_k = dequantize_values if self.keys_per_token else dequantize_keys
        k = deq_k(self.k_codes, self.k_scale, self.k_mn, self.bits, self.dtype)
        v = dequantize_values(self.v_codes, self.v_scale, self.v_mn, self.bits, self.dtype)
        return k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        _check_states(self, key_states, value_states, FP16_MAX)  # what enters the residual must quantize later
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        key_states, value_states = key_states.to(self.dtype), value_states.to(self.dtype)
        old = self._dequantized()
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        keys, values = (self.keys, self.values) if old is None else \
            (torch.cat([old[0], self.keys], -2), torch.cat([old[1], self.values], -2))
        self._flush()
        return keys, values

    def _flush(self) -> None:
        """Move whole groups of the oldest residual tokens into the quantized store, keeping ≥ residual tokens."""
        G = self.group_size
        n = (self.keys.shape[-2] - self.residual) // G * G
        if n <= 0:
            return
        kc, ks, km = (quantize_values if self.keys_per_token else quantize_keys)(self.keys[..., :n, :], self.bits, G)
        vc, vs, vm = quantize_values(self.values[..., :n, :], self.bits, G)
        if self.k_codes is None:
            self.k_codes, self.k_scale, self.k_mn, self.v_codes, self.v_scale, self.v_mn = kc, ks, km, vc, vs, vm
        else:
            self.k_codes = torch.cat([self.k_codes, kc], -2)
            self.k_scale, self.k_mn = torch.cat([self.k_scale, ks], -2), torch.cat([self.k_mn, km], -2)
            self.v_codes = torch.cat([self.v_codes, vc], -2)
            self.v_scale, self.v_mn = torch.cat([self.v_scale, vs], -2), torch.cat([self.v_mn, vm], -2)
        self.keys = self.keys[..., n:, :].clone()
        self.values = self.values[..., n:, :].clone()

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.n_quantized + self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self._shape = None
        self._clear_quantized()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop({tokens_to_remove}): pass a negative number of tokens to remove")
        n = -tokens_to_remove
        if n == 0 or not self.is_initialized:
            return
        if n > self.keys.shape[-2]:
            raise ValueError(f"crop({tokens_to_remove}): only the {self.keys.shape[-2]} tokens of the residual "
                             "window can be removed; quantized groups are not re-opened")
        self.keys, self.values = self.keys[..., :-n, :], self.values[..., :-n, :]

    def _batch_apply(self, fn) -> None:
        if not self.is_initialized:
            return
        self.keys, self.values = fn(self.keys), fn(self.values)
        if self.k_codes is not None:
            for name in ("k_codes", "k_scale", "k_mn", "v_codes", "v_scale", "v_mn"):
                setattr(self, name, fn(getattr(self, name)))
        self._shape = (self.keys.shape[0],) + self._shape[1:]

    def nbytes(self) -> int:
        """Bytes this layer holds: codes, fp16 scales and minima, and the full-precision residual window."""
        if not self.is_initialized:
            return 0
        parts = [self.keys, self.values]
        if self.k_codes is not None:
            parts += [self.k_codes, self.k_scale, self.k_mn, self.v_codes, self.v_scale, self.v_mn]
        return sum(t.numel() * t.element_size() for t in parts)


class FP8Layer(_BatchOps, DynamicLayer):
    """One decoder block's FP8 E4M3 cache: ``self.keys`` / ``self.values`` hold ``float8_e4m3fn`` codes.

    scale: the per-layer divisor (states / scale must fit ±448 or they saturate); max_tokens as for KIVILayer.
    """

    def __init__(self, scale: float = 1.0, max_tokens: int | None = None):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and scale < float("inf")):
            raise ValueError(f"scale={scale!r}: a positive finite divisor")
        _check_max_tokens(max_tokens)
        self.scale, self.max_tokens, self._shape = float(scale), max_tokens, None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.empty(*key_states.shape[:2], 0, key_states.shape[-1], dtype=torch.float8_e4m3fn,
                                device=self.device)
        self.values = torch.empty(*value_states.shape[:2], 0, value_states.shape[-1], dtype=torch.float8_e4m3fn,
                                  device=self.device)
        self.is_initialized = True
        self._shape = (key_states.shape[0], key_states.shape[1], key_states.shape[-1], value_states.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        _check_states(self, key_states, value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        key_states, value_states = key_states.to(self.dtype), value_states.to(self.dtype)
        keys = torch.cat([fp8_decode(self.keys, self.scale, self.dtype), key_states], -2)
        values = torch.cat([fp8_decode(self.values, self.scale, self.dtype), value_states], -2)
        self.keys = torch.cat([self.keys, fp8_encode(key_states, self.scale)], -2)
        self.values = torch.cat([self.values, fp8_encode(value_states, self.scale)], -2)
        return keys, values

    def get_seq_length(self) -> int:
        return 0 if not self.is_initialized else self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self._shape = None

    def _batch_apply(self, fn) -> None:
        if not self.is_initialized:
            return
        # index_select has no float8 kernel on every build: select on the bytes
        self.keys = fn(self.keys.view(torch.uint8)).view(torch.float8_e4m3fn)
        self.values = fn(self.values.view(torch.uint8)).view(torch.float8_e4m3fn)
        self._shape = (self.keys.shape[0],) + self._shape[1:]

    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.numel() + self.values.numel()


def _n_layers(model_or_config) -> int:
    cfg = getattr(model_or_config, "config", model_or_config)
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{type(model_or_config).__name__}: expected a transformers model or config with "
                         "num_hidden_layers")
    return n


def quantized_cache(model_or_config, setting: str = "int4", **kwargs) -> Cache:
    """A ``Cache`` of one quantized layer per decoder block: pass it as ``model.generate(..., past_key_values=)``.

    setting: one of :data:`KV_SETTINGS` ("int8", "int4", "int2", "fp8"); ``kwargs`` override the layer's
    defaults (``group_size``, ``residual``, ``max_tokens`` for KIVI; ``scale``, ``max_tokens`` for FP8).
    """
    if setting not in KV_SETTINGS:
        raise ValueError(f"setting={setting!r}: choose one of {sorted(KV_SETTINGS)}")
    kind, base = KV_SETTINGS[setting]
    if "bits" in kwargs:
        raise ValueError(f"bits={kwargs['bits']!r}: the setting {setting!r} fixes the bits; choose the setting "
                         f"by name instead ({sorted(KV_SETTINGS)})")
    cls = KIVILayer if kind == "kivi" else FP8Layer
    args = {**base, **kwargs}
    n = _n_layers(model_or_config)
    try:
        layers = [cls(**args) for _ in range(n)]
    except TypeError as e:
        raise ValueError(f"{setting!r} cache: {e}") from None
    return Cache(layers=layers)


def cache_nbytes(cache: Cache) -> int:
    """Bytes a cache holds across its layers (for a float ``DynamicCache``: its key and value tensors)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "nbytes"):
            total += layer.nbytes()
        elif getattr(layer, "is_initialized", False):
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    return total


