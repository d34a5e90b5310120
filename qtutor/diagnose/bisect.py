"""Bisect a quantized model's regression down to the layers that cause it.

The situation: a quantized build scores worse than it should (its KL against the
float model, or its perplexity, is above what the same recipe gave last time),
and nothing says why. As ``git bisect`` does for commits, test sets of layers:
give a set the suspect build's weights and every other layer the known-good
weights; if the metric stays near the good reference, the culprits are
elsewhere. Halving the set each time finds one culprit among ``n`` layers in
``⌈log2 n⌉`` evaluations; ``k`` culprits, found one at a time — adaptive group
testing (Hwang, 1972) — take at most ``k·⌈log2 n⌉ + k``.

The assumption that makes it work: a set that holds a culprit scores worse than
``reference + tolerance``, one that holds none does not (the damage of a culprit
shows on its own). Each round halves a bad set down to one culprit, testing only
first halves (a clean first half means the culprit is in the second), then
tests what is left without it. :func:`plant_regression` makes such a build on purpose, with
the answer kept aside, so the method can be checked.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model.walk import decoder_linears
from ..primitives.grid import rtn_grid_quantize
from ..progress import progress as _progress

__all__ = ["Recipe", "GOOD", "BAD", "PlantedRegression", "plant_regression", "split_halves", "choose_half",
           "BisectResult", "bisect_layers", "swap_evaluator", "recipe_weights", "restore_report"]


@dataclass(frozen=True)
class Recipe:
    """Round-to-nearest of one linear: ``n_bits`` codes, one fp16 scale and a packed zero-point per group.

    ``scale_error`` multiplies the dequantized weight: 1.0 for a correct build, 2.0 for
    the bug of an exporter that wrote every scale twice too large (the codes are fine).
    """

    n_bits: int
    group_size: int | None  # None: one group per output row
    scale_error: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.n_bits, int) or not 2 <= self.n_bits <= 8:
            raise ValueError(f"n_bits={self.n_bits!r}: must be an integer from 2 to 8")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size={self.group_size!r}: must be a positive integer or None (per row)")
        if not (isinstance(self.scale_error, (int, float)) and math.isfinite(self.scale_error) and self.scale_error > 0):
            raise ValueError(f"scale_error={self.scale_error!r}: must be a positive finite number")

    @property
    def label(self) -> str:
        g = f"g{self.group_size}" if self.group_size else "per-channel"
        return f"W{self.n_bits} {g}" + (f", scale ×{self.scale_error:g}" if self.scale_error != 1 else "")

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """The dequantized weight (out, in), in ``w``'s dtype."""
        return rtn_grid_quantize(w, self.n_bits, self.group_size).dequantize(w.dtype) * self.scale_error

    def nbytes(self, out_features: int, in_features: int) -> float:
        """Exact storage of one weight: codes, an fp16 scale and an ``n_bits`` zero-point per group (bytes)."""
        groups = -(-in_features // self.group_size) if self.group_size else 1
        return (out_features * in_features * self.n_bits + out_features * groups * (16 + self.n_bits)) / 8


GOOD = Recipe(4, 64)
BAD = Recipe(4, 64, scale_error=2.0)


@dataclass(frozen=True)
class PlantedRegression:
    """The hidden answer of :func:`plant_regression`: which layers got the bad recipe."""

    culprits: tuple[str, ...]
    good: Recipe
    bad: Recipe
    seed: int


def recipe_weights(model: nn.Module, recipe: Recipe) -> dict[str, torch.Tensor]:
    """``{name: recipe.apply(weight)}`` for every decoder linear (the model is not changed)."""
    with torch.no_grad():
        return {n: recipe.apply(m.weight.detach()) for n, m in decoder_linears(model).items()}


@torch.no_grad()
def plant_regression(model: nn.Module, seed: int, n_culprits: int = 2, good: Recipe = GOOD, bad: Recipe = BAD,
                     candidates: Sequence[str] | None = None) -> tuple[nn.Module, PlantedRegression]:
    """A quantized copy of ``model``: every decoder linear in ``good``, ``n_culprits`` seeded ones in ``bad``.

    The culprits are drawn uniformly from ``candidates`` (default: every decoder linear)
    with a ``torch.Generator`` seeded by ``seed``. ``model`` itself is not changed.
    """
    names = list(decoder_linears(model))
    candidates = names if candidates is None else list(candidates)
    unknown = sorted(set(candidates) - set(names))
    if unknown:
        raise ValueError(f"candidates {unknown[:3]} are not decoder linears of this model")
    if not isinstance(n_culprits, int) or not 1 <= n_culprits <= len(candidates):
        raise ValueError(f"n_culprits={n_culprits!r}: must be an integer from 1 to {len(candidates)}")
    gen = torch.Generator().manual_seed(seed)
    picked = {candidates[i] for i in torch.randperm(len(candidates), generator=gen)[:n_culprits].tolist()}
    culprits = tuple(n for n in names if n in picked)  # in model order
    planted = copy.deepcopy(model)
    for n, m in decoder_linears(planted).items():
        m.weight.copy_((bad if n in picked else good).apply(m.weight))
    return planted, PlantedRegression(culprits, good, bad, seed)


def split_halves(layers: Sequence[str]) -> tuple[list[str], list[str]]:
    """``layers[:n // 2]`` and ``layers[n // 2:]``: the split every bisection step uses (needs 2 or more)."""
    if len(layers) < 2:
        raise ValueError(f"cannot split {len(layers)} layer(s): a bisection step needs at least 2")
    mid = len(layers) // 2
    return list(layers[:mid]), list(layers[mid:])


def choose_half(layers: Sequence[str], evaluate: Callable[[tuple[str, ...]], float], threshold: float) -> list[str]:
    """One step with a single culprit in ``layers``: the half that holds it.

    Test the first half only: if its metric is above ``threshold`` the culprit is
    there, otherwise (the whole set being bad) it is in the second half.
    """
    first, second = split_halves(layers)
    return first if evaluate(tuple(first)) > threshold else second


@dataclass
class BisectResult:
    """The culprits found, every step taken (``{'step', 'layers', 'n_layers', 'metric', 'verdict'}``)."""

    culprits: list[str]
    steps: list[dict] = field(default_factory=list)
    reference: float = 0.0
    tolerance: float = 0.0

    @property
    def n_evaluations(self) -> int:
        return sum(1 for s in self.steps if s["metric"] is not None)


def _describe(layers: Sequence[str], order: dict[str, int]) -> str:
    """``'model.layers.3.mlp.up_proj'`` or ``'#12–#64 (53 layers)'`` by position in the candidate list."""
    if len(layers) == 1:
        return layers[0]
    return f"#{order[layers[0]]}–#{order[layers[-1]]} ({len(layers)} layers)"


def bisect_layers(candidates: Sequence[str], evaluate: Callable[[tuple[str, ...]], float], reference: float,
                  tolerance: float, suspect_metric: float | None = None, progress: bool = False) -> BisectResult:
    """Find every layer whose suspect weights push the metric above ``reference + tolerance``.

    ``evaluate(layers)`` returns the metric (lower is better) of the model in which
    exactly ``layers`` keep the suspect weights and every other candidate has the good
    ones (:func:`swap_evaluator` builds it for a model). ``reference`` is what the good
    build scores. The whole set is evaluated first (or ``suspect_metric`` is taken as
    its metric): if it is not bad there is no regression and no culprit. Each culprit
    costs at most ``⌈log2 n⌉`` evaluations to find plus one to test the layers left
    after removing it: ``k·⌈log2 n⌉ + k`` in all (one more without ``suspect_metric``).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates is empty: give the layer names to search")
    if len(set(candidates)) != len(candidates):
        raise ValueError("candidates holds a layer twice")
    if not callable(evaluate):
        raise ValueError(f"evaluate must be callable (a set of layers -> metric), got {type(evaluate).__name__}")
    for name, value in (("reference", reference), ("tolerance", tolerance)) + (
            (("suspect_metric", suspect_metric),) if suspect_metric is not None else ()):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r}: must be a finite number")
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance!r}: must be zero or positive")
    order = {n: i for i, n in enumerate(candidates)}
    threshold = reference + tolerance
    result = BisectResult([], [], float(reference), float(tolerance))
    bar = _progress(iter(int, 1), "bisecting", unit="eval", enabled=progress)  # endless: ticks once per evaluation
    ticks = iter(bar)

    def test(layers: list[str]) -> bool:
        metric = float(evaluate(tuple(layers)))
        if not math.isfinite(metric):
            raise ValueError(f"evaluate returned {metric} for {_describe(layers, order)}: the metric must be finite")
        bad = metric > threshold
        result.steps.append({"step": len(result.steps) + 1, "layers": _describe(layers, order),
                             "n_layers": len(layers), "metric": metric, "verdict": "bad" if bad else "clean"})
        next(ticks)
        return bad

    def find_one(layers: list[str]) -> str:  # layers is known to hold a culprit: halve down to it
        while len(layers) > 1:
            first, second = split_halves(layers)
            if test(first):
                layers = first
            else:  # the set is bad and its first half clean: the culprit is in the second half, untested
                result.steps.append({"step": len(result.steps) + 1, "layers": _describe(second, order),
                                     "n_layers": len(second), "metric": None, "verdict": "bad (inferred)"})
                layers = second
        return layers[0]

    try:
        if suspect_metric is None:
            bad = test(candidates)
        else:  # measured already, when the regression was noticed: no evaluation spent
            bad = suspect_metric > threshold
            result.steps.append({"step": 1, "layers": _describe(candidates, order), "n_layers": len(candidates),
                                 "metric": None, "verdict": ("bad" if bad else "clean") + " (given)"})
        remaining = candidates
        while bad:  # find one culprit, take it out, and test what is left
            culprit = find_one(remaining)
            result.culprits.append(culprit)
            remaining = [n for n in remaining if n != culprit]
            bad = bool(remaining) and test(remaining)
    finally:
        if hasattr(bar, "close"):
            bar.close()
    return result


def swap_evaluator(model: nn.Module, suspect: dict[str, torch.Tensor], good: dict[str, torch.Tensor],
                   metric: Callable[[nn.Module], float]) -> Callable[[tuple[str, ...]], float]:
    """``evaluate(layers)`` for :func:`bisect_layers`: ``model`` with ``layers`` from ``suspect``, the rest ``good``.

    Writes into ``model``'s decoder linears in place (only the layers whose source
    changed since the last call), then returns ``metric(model)``.
    """
    linears = decoder_linears(model)
    missing = sorted((set(suspect) | set(good)) - set(linears))
    if missing:
        raise ValueError(f"{missing[:3]} are not decoder linears of the model")
    current: dict[str, str] = {}

    @torch.no_grad()
    def evaluate(layers: tuple[str, ...]) -> float:
        chosen = set(layers)
        unknown = sorted(chosen - set(suspect))
        if unknown:
            raise ValueError(f"{unknown[:3]} have no suspect weights")
        for n in good:
            source = "suspect" if n in chosen else "good"
            if current.get(n) != source:
                linears[n].weight.copy_(suspect[n] if source == "suspect" else good[n])
                current[n] = source
        return float(metric(model))

    return evaluate


@torch.no_grad()
def restore_report(float_model: nn.Module, model: nn.Module, culprits: Sequence[str],
                   metric: Callable[[nn.Module], float], stored_as: Recipe, reference: float | None = None) -> dict:
    """Keep ``culprits`` in 16 bits (the float weights) in a copy of ``model``: what it recovers and costs.

    Returns the metric before and after, the fraction of the loss recovered
    (``(before − after) / (before − reference)``, with ``reference`` the good build's
    metric, by default the float model's), and the exact memory: bytes of the culprits
    in ``stored_as`` vs in fp16 (2 bytes per weight), and the difference in MB (10⁶ bytes).
    """
    floats, linears = decoder_linears(float_model), decoder_linears(model)
    unknown = sorted(set(culprits) - set(linears))
    if unknown:
        raise ValueError(f"{unknown[:3]} are not decoder linears of the model")
    before = float(metric(model))
    reference = float(metric(float_model)) if reference is None else float(reference)
    fixed = copy.deepcopy(model)
    fixed_linears = decoder_linears(fixed)
    for n in culprits:
        fixed_linears[n].weight.copy_(floats[n].weight)
    after = float(metric(fixed))
    quantized = sum(stored_as.nbytes(*linears[n].weight.shape) for n in culprits)
    fp16 = sum(2 * linears[n].weight.numel() for n in culprits)
    loss = before - reference
    return {"metric_before": before, "metric_after": after, "reference": reference,
            "recovered": (before - after) / loss if loss > 0 else float("nan"),
            "culprit_bytes_quantized": quantized, "culprit_bytes_fp16": fp16, "extra_mb": (fp16 - quantized) / 1e6}
