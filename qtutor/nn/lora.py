"""LoRA adapters on a frozen (quantized) base layer: QLoRA's recipe on qtutor's ``NF4Linear``.

Hu et al., "LoRA" (2021) and Dettmers et al., "QLoRA" (2023); the peer is peft's ``LoraLayer`` on bitsandbytes'
``Linear4bit`` (``peft/tuners/lora/bnb.py``). ``y = base(x) + (α / r) · dropout(x) Aᵀ Bᵀ`` with ``A`` (r, in)
initialized as peft does (Kaiming-uniform with a = √5) and ``B`` (out, r) zeros, so a fresh adapter changes
nothing. The adapters are trainable parameters in ``adapter_dtype`` (bfloat16 as QLoRA); the base keeps no
gradient: ``NF4Linear`` holds its codes in buffers, and any plain ``nn.Linear`` base is frozen here.

:func:`merge_lora` folds ``(α/r) B A`` into the dequantized base weight and re-quantizes it to NF4 — the
rounding that QA-LoRA was designed to avoid; the merged layer is a plain ``NF4Linear`` again.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..methods.nf4 import dequantize_4bit
from .nf4 import NF4Linear

__all__ = ["LoRALinear", "add_lora_", "lora_parameters", "merge_lora"]


class LoRALinear(nn.Module):
    """A frozen ``base`` (``NF4Linear`` or ``nn.Linear``) plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 adapter_dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(base, (NF4Linear, nn.Linear)):
            raise ValueError(f"base must be an NF4Linear or nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"r={r!r}: the rank must be a positive integer")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha={alpha!r}: must be a positive finite number")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r}: must be in [0, 1)")
        if adapter_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"adapter_dtype={adapter_dtype}: allowed float32, bfloat16, float16")
        self.base, self.r, self.alpha = base, r, float(alpha)
        self.in_features, self.out_features = base.in_features, base.out_features
        for p in base.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        a = torch.empty(r, self.in_features)
        bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform_(a=√5) on an (r, in) weight
        a.uniform_(-bound, bound, generator=g)
        device = base.packed.device if isinstance(base, NF4Linear) else base.weight.device
        self.lora_A = nn.Parameter(a.to(device=device, dtype=adapter_dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=adapter_dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T
        return y + (h * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, adapters={self.lora_A.dtype}"


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora_(model: nn.Module, targets: Callable[[str], bool], r: int = 8, alpha: float = 16.0,
              dropout: float = 0.0, adapter_dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> list[str]:
    """Wrap every ``NF4Linear`` / ``nn.Linear`` whose name passes ``targets`` in a ``LoRALinear``; freeze all else.

    Returns the wrapped names. Every argument is checked before the model changes; no match is an error.
    """
    names = [n for n, m in model.named_modules()
             if isinstance(m, (NF4Linear, nn.Linear)) and not isinstance(m, LoRALinear) and n and targets(n)
             and not any(n.startswith(w + ".") for w, mm in model.named_modules() if isinstance(mm, LoRALinear))]
    if not names:
        raise ValueError("targets matched no NF4Linear or nn.Linear of the model")
    LoRALinear(nn.Linear(1, 1), r, alpha, dropout, adapter_dtype)  # validates the arguments before any change
    for p in model.parameters():
        p.requires_grad_(False)
    for i, n in enumerate(names):
        _set(model, n, LoRALinear(model.get_submodule(n), r, alpha, dropout, adapter_dtype, seed + i))
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (what the optimizer gets)."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


@torch.no_grad()
def merge_lora(layer: LoRALinear) -> nn.Module:
    """The base with ``(α/r) B A`` added: a new ``NF4Linear`` re-quantized with the base's config, or an ``nn.Linear``."""
    if not isinstance(layer, LoRALinear):
        raise ValueError(f"layer must be a LoRALinear, got {type(layer).__name__}")
    delta = (layer.lora_B.float() @ layer.lora_A.float()) * layer.scaling
    base = layer.base
    if isinstance(base, nn.Linear):
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(base.weight + delta.to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged
    w = dequantize_4bit(base.state()).float().cpu() + delta.cpu()
    out = nn.Linear(base.in_features, base.out_features, bias=False)
    out.weight.copy_(w)
    merged = NF4Linear.from_linear(out, base.config, base.use_kernel)
    if base.bias is not None:
        merged.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
    return merged.to(base.packed.device)
