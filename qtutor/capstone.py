"""The capstone's judge: does a quantized model fit a size budget and keep a quality floor on held-out text?

The learner gets a :class:`Budget` (megabytes of weights as stored, and a KL floor) and may use any method or
mix the course taught, as long as the decoder linears end up as qtutor's quantized modules (``qtutor.nn.convert``
or a mix of them). :func:`check_capstone` measures

* **size**: every tensor of every decoder linear as stored (codes, scales, zero-points, at their own dtypes);
  everything else (embeddings, norms, an untied head) at 16 bits, as checkpoints store it. A decoder linear that is
  still an ``nn.Linear`` counts 16 bits per weight — fake-quantized weights are not smaller;
* **quality**: mean KL(p_float ‖ p_model) per token on four WikiText-2 test windows of 256 tokens that no notebook
  scores (windows 20–23; the notebooks use the first 16), against the float model's log-probabilities.

It raises :class:`qtutor.checks.CheckFailed` with one short message for an over-budget or under-quality model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .checks import CheckFailed
from .eval import EvalConfig, ReferenceLogits, eval_windows, logit_agreement
from .model import decoder_blocks

__all__ = ["Budget", "held_out_reference", "stored_megabytes", "check_capstone"]

HELD_OUT = slice(20, 24)  # windows of 256 tokens of WikiText-2 test that no notebook scores


@dataclass(frozen=True)
class Budget:
    max_mb: float  # megabytes (10⁶ bytes) of weights as stored
    max_kl: float  # nats per token on the held-out windows

    def __post_init__(self) -> None:
        for name in ("max_mb", "max_kl"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}={v!r}: must be a positive finite number")


@torch.no_grad()
def held_out_reference(float_model: nn.Module, tokenizer) -> ReferenceLogits:
    """The float model's log-probabilities on the held-out windows (compute once, before quantizing a copy)."""
    windows = eval_windows(tokenizer, EvalConfig(ctx=256, n_windows=HELD_OUT.stop))[HELD_OUT]
    device = next(float_model.parameters()).device
    logprobs = torch.cat([torch.log_softmax(float_model(w[None].to(device)).logits.float(), -1).cpu()
                          for w in windows])
    return ReferenceLogits(windows, logprobs)


def stored_megabytes(model: nn.Module) -> dict[str, float]:
    """``{'linears', 'rest', 'total'}`` in MB (what a checkpoint stores: the state dict, a tied head once), and
    ``'float_linears'``: how many decoder linears are still ``nn.Linear``."""
    linears = _linear_slots(model)
    float_linears = sum(type(m) is nn.Linear for m in linears.values())
    seen: set[tuple[int, int]] = set()
    lin_bytes = rest = 0
    for key, t in model.state_dict(keep_vars=True).items():
        ident = (t.data_ptr(), t.numel())
        if ident in seen:  # a tied head shares the embedding's storage
            continue
        seen.add(ident)
        owner = key.rpartition(".")[0]
        while owner and owner not in linears:
            owner = owner.rpartition(".")[0]
        if owner:
            as_float = type(linears[owner]) is nn.Linear and t.is_floating_point()
            lin_bytes += 2 * t.numel() if as_float else t.numel() * t.element_size()
        else:
            rest += 2 * t.numel() if t.is_floating_point() else t.numel() * t.element_size()
    return {"linears": lin_bytes / 1e6, "rest": rest / 1e6, "total": (lin_bytes + rest) / 1e6,
            "float_linears": float_linears}


def _linear_slots(model: nn.Module) -> dict[str, nn.Module]:
    """The decoder's linear layers whatever they became: ``nn.Linear`` or one of qtutor's quantized modules
    (outermost only: an adapter's base is inside its wrapper)."""
    blocks = decoder_blocks(model)
    prefix = "model.layers" if hasattr(model, "model") else "layers"
    slots: dict[str, nn.Module] = {}
    for i, block in enumerate(blocks):
        for name, mod in block.named_modules():
            full = f"{prefix}.{i}.{name}"
            if not name or any(full.startswith(s + ".") for s in slots):
                continue
            if isinstance(mod, nn.Linear) or type(mod).__module__.startswith("qtutor.nn"):
                slots[full] = mod
    return slots


def check_capstone(model: nn.Module, reference: ReferenceLogits, budget: Budget) -> dict:
    """Measure ``model`` against ``budget``; returns ``{'mb', 'kl', 'top1', ...}`` or raises ``CheckFailed``."""
    if not isinstance(budget, Budget):
        raise ValueError(f"budget must be a qtutor.capstone.Budget, got {type(budget).__name__}")
    if not isinstance(reference, ReferenceLogits):
        raise ValueError("reference must come from held_out_reference(float_model, tokenizer)")
    size = stored_megabytes(model)
    if size["total"] > budget.max_mb:
        hint = (f" {size['float_linears']} decoder linears are still nn.Linear: fake-quantized weights are stored at "
                "16 bits, so convert them (qtutor.nn.convert) to count as packed." if size["float_linears"] else
                " Use fewer bits, or larger groups, where the layers are least sensitive (notebook 12).")
        raise CheckFailed(f"over budget: {size['total']:.1f} MB of weights, the budget is {budget.max_mb:.1f} MB.{hint}")
    with torch.no_grad():
        scores = logit_agreement(model, reference)
    if not math.isfinite(scores["kl"]):
        raise CheckFailed("the model's outputs are not finite on the held-out text: a scale or a layer overflowed")
    if scores["kl"] > budget.max_kl:
        raise CheckFailed(f"under the quality floor: KL {scores['kl']:.3f} nats/token on held-out text, the floor "
                          f"allows {budget.max_kl:.3f}. Spend more bits on the sensitive layers (notebook 12) or use "
                          "a better method (GPTQ, AWQ) on the same budget.")
    return {"mb": size["total"], "linears_mb": size["linears"], "kl": scores["kl"], "top1": scores["top1"]}
