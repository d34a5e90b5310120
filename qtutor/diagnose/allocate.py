"""A bit allocator: one (n_bits, group_size) scheme per decoder linear under a budget in bits per weight.

Size is counted exactly, as :meth:`qtutor.pipeline.compare.WeightFormat.bits_per_weight`
counts it (the GPTQ/AWQ checkpoint layout): per layer of shape (out, in),

    bits = out · (n_bits · in + n_groups · (16 + n_bits)),   n_groups = ceil(in / group_size) (1 for None),

an fp16 scale and an ``n_bits`` zero-point per group, a short last group included.
The model's bits per weight is the sum over layers divided by their weights.

**Method: a multiple-choice knapsack, solved exactly by dynamic programming on
discretised sizes.** Each layer must take exactly one scheme; the summed damage
(measured KL or a proxy, assumed additive over layers) is minimised subject to
the summed size. Every layer's cheapest scheme is paid exactly; only the *extra*
size of a dearer scheme is rounded **up** to a unit of ``ceil(N · span / resolution)``
bits (N weights, ``span`` the widest spread of bits per weight between schemes) and
the spare budget is rounded **down**. So the answer never exceeds the budget, it is
the exact optimum of the discretised problem, and it can leave at most one unit per
layer unspent (≤ ``n_layers · span / resolution`` bits per weight: 0.026 for
SmolLM2's 210 layers at the default resolution). The unit does not depend on the
budget, so the optimal damage never rises when the budget does. (A Lagrangian
relaxation — minimise damage + λ·size per layer, bisect λ — is cheaper but only
reaches allocations on the lower convex hull of each layer's options, and can leave
much of the budget unspent between two of them.)
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..model.walk import decoder_linears
from ..primitives.grid import rtn_grid_quantize
from ..primitives.spec import check_n_bits_group_size

__all__ = ["Scheme", "ALL_SCHEMES", "Allocation", "layer_bits", "linear_shapes", "model_bits_per_weight",
           "damage_from_frame", "allocate", "uniform_options", "best_uniform", "scheme_from_label", "rtn_mixed",
           "swapped_weights"]


@dataclass(frozen=True)
class Scheme:
    """One layer's format: ``n_bits`` codes, an fp16 scale and an ``n_bits`` zero-point per group."""

    n_bits: int
    group_size: int | None  # None: one group per output row

    def __post_init__(self) -> None:
        check_n_bits_group_size(self.n_bits, self.group_size)

    @property
    def label(self) -> str:
        return f"W{self.n_bits} " + (f"g{self.group_size}" if self.group_size else "per-channel")

    def bits(self, out_features: int, in_features: int) -> int:
        """Exact storage of an (out, in) weight in this scheme, in bits."""
        groups = -(-in_features // self.group_size) if self.group_size else 1
        return out_features * (self.n_bits * in_features + groups * (16 + self.n_bits))


ALL_SCHEMES: tuple[Scheme, ...] = tuple(Scheme(b, g) for b in (2, 3, 4, 8) for g in (32, 64, 128, None))

Shapes = Mapping[str, tuple[int, int]]


def layer_bits(shape: tuple[int, int], scheme: Scheme) -> int:
    """Bits of one (out, in) weight under ``scheme``."""
    return scheme.bits(*shape)


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (out_features, in_features)}`` of every decoder linear."""
    return {n: (m.out_features, m.in_features) for n, m in decoder_linears(model).items()}


def model_bits_per_weight(shapes: Shapes, schemes: Mapping[str, Scheme]) -> float:
    """Exact bits per weight of the decoder linears, each in its scheme."""
    total = sum(layer_bits(shapes[n], schemes[n]) for n in shapes)
    return total / sum(o * i for o, i in shapes.values())


@dataclass
class Allocation:
    """The scheme chosen for every layer, its exact bits per weight and summed damage."""

    schemes: dict[str, Scheme]
    bits_per_weight: float
    damage: float
    budget: float

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"layer": n, "bits": s.n_bits, "group_size": s.group_size, "scheme": s.label}
                             for n, s in self.schemes.items()])


def damage_from_frame(frame: pd.DataFrame, column: str) -> dict[str, dict[Scheme, float]]:
    """``{layer: {Scheme: damage}}`` from rows with ``layer``, ``bits``, ``group_size`` and ``column``."""
    for c in ("layer", "bits", "group_size", column):
        if c not in frame.columns:
            raise ValueError(f"frame has no column {c!r}; it needs layer, bits, group_size and {column!r}")
    out: dict[str, dict[Scheme, float]] = {}
    for layer, bits, gs, d in zip(frame["layer"], frame["bits"], frame["group_size"], frame[column]):
        gs = None if gs is None or (isinstance(gs, float) and math.isnan(gs)) else int(gs)
        out.setdefault(layer, {})[Scheme(int(bits), gs)] = float(d)
    return out


def _check(budget: float, shapes: Shapes, damage: Mapping | None, schemes: Sequence[Scheme],
           allowed: Mapping[str, Sequence] | None = None) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget={budget!r}: must be a finite number of bits per weight > 0")
    if not shapes:
        raise ValueError("shapes is empty: there are no layers to allocate bits to")
    if not schemes:
        raise ValueError("schemes is empty: give at least one Scheme(n_bits, group_size)")
    if damage is None:
        return
    missing = [n for n in shapes if n not in damage]
    if missing:
        raise ValueError(f"damage has no entry for layer {missing[0]!r} ({len(missing)} layers missing)")
    for n in shapes:
        for s in (schemes if allowed is None else allowed[n]):
            if s not in damage[n]:
                raise ValueError(f"damage[{n!r}] has no value for {s.label}; allowed schemes need one each")
            if not math.isfinite(damage[n][s]):
                raise ValueError(f"damage[{n!r}][{s.label}] = {damage[n][s]!r}: must be finite")


def _min_bpw(shapes: Shapes, schemes: Sequence[Scheme], allowed: Mapping[str, Sequence] | None = None
             ) -> tuple[int, float]:
    total = sum(min(layer_bits(shp, s) for s in (schemes if allowed is None else allowed[n]))
                for n, shp in shapes.items())
    return total, total / sum(o * i for o, i in shapes.values())


def _check_allowed(shapes: Shapes, schemes: Sequence, allowed: Mapping[str, Sequence] | None) -> None:
    if allowed is None:
        return
    if not isinstance(allowed, Mapping):
        raise ValueError(f"allowed must be a mapping {{layer: options}}, got {type(allowed).__name__}")
    missing = [n for n in shapes if n not in allowed]
    if missing:
        raise ValueError(f"allowed has no entry for layer {missing[0]!r} ({len(missing)} layers missing)")
    for n in shapes:
        if not allowed[n]:
            raise ValueError(f"allowed[{n!r}] is empty: every layer needs at least one option")
        foreign = [s for s in allowed[n] if s not in schemes]
        if foreign:
            raise ValueError(f"allowed[{n!r}] holds {getattr(foreign[0], 'label', foreign[0])!r}, which is not "
                             "among schemes")


def _check_reachable(budget: float, shapes: Shapes, schemes: Sequence[Scheme],
                     allowed: Mapping[str, Sequence] | None = None) -> None:
    _, smallest = _min_bpw(shapes, schemes, allowed)
    if Fraction(budget) * sum(o * i for o, i in shapes.values()) < _min_bpw(shapes, schemes, allowed)[0]:
        raise ValueError(f"budget={budget!r} bits per weight is below the smallest allowed: {smallest:.4f} "
                         "(every layer in its cheapest scheme, scales and zero-points included)")


def allocate(damage: Mapping[str, Mapping[Scheme, float]], shapes: Shapes, budget: float,
             schemes: Sequence[Scheme] = ALL_SCHEMES, resolution: int = 1 << 16,
             allowed: Mapping[str, Sequence] | None = None, exact_sizes: bool = False) -> Allocation:
    """Minimise the summed ``damage[layer][scheme]`` with one scheme per layer at ≤ ``budget`` bits per weight.

    See the module docstring: an exact knapsack DP on sizes rounded up to a fixed unit; never over budget.
    An option is anything with ``label`` and ``bits(out_features, in_features)`` — a :class:`Scheme`, or a
    GGML type (:class:`qtutor.diagnose.gguf_mix.GGMLType`). ``allowed`` (optional, ``{layer: options}``, each
    a subset of ``schemes``) restricts what each layer may take, e.g. the GGML types whose blocks divide
    its rows; ``damage`` then needs values for the allowed options only.

    ``exact_sizes=True`` makes the unit the greatest common divisor of the options' extra sizes instead of a
    rounded one, so every mixture within the budget is a candidate and none is lost to rounding (an
    allocation at a competitor's exact size can then never sum to more damage than the competitor's). It
    suits options whose sizes share a large divisor, as GGML blocks do; it refuses when that would take more
    than ``64 · resolution`` units.
    """
    schemes = list(dict.fromkeys(schemes))
    _check_allowed(shapes, schemes, allowed)
    _check(budget, shapes, damage, schemes, allowed)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution={resolution!r}: must be a positive integer")
    _check_reachable(budget, shapes, schemes, allowed)
    names = list(shapes)
    n_weights = sum(o * i for o, i in shapes.values())
    ok = np.array([[allowed is None or s in allowed[n] for s in schemes] for n in names])  # (L, S)
    size = np.array([[layer_bits(shapes[n], s) if ok[li, si] else 0 for si, s in enumerate(schemes)]
                     for li, n in enumerate(names)], dtype=np.int64)  # (L, S)
    cost = np.array([[damage[n][s] if ok[li, si] else np.inf for si, s in enumerate(schemes)]
                     for li, n in enumerate(names)], dtype=np.float64)  # (L, S)
    base = np.where(ok, size, np.iinfo(np.int64).max).min(axis=1)  # each layer's cheapest option, paid exactly
    size = np.where(ok, size, base[:, None])  # a disallowed option: never chosen (infinite cost)
    bpw = size / np.array([o * i for o, i in shapes.values()])[:, None]
    span = float(bpw.max() - bpw.min())
    unit = max(1, math.ceil(n_weights * span / resolution))
    if exact_sizes:
        unit = math.gcd(*(int(v) for v in np.unique(size - base[:, None])))
        if unit == 0:  # every layer has one size: nothing to choose by size
            unit = 1
        if int((size - base[:, None]).max(axis=1).sum()) // unit > 64 * resolution:
            raise ValueError(f"exact_sizes=True: the options' sizes share only a {unit}-bit unit, too fine for an "
                             f"exact table; use exact_sizes=False (rounded to 1/{resolution} of the spread)")
    extra = -(-(size - base[:, None]) // unit)  # rounded up: (L, S) units
    spare = Fraction(budget) * n_weights - int(base.sum())
    capacity = min(math.floor(spare / unit), int(extra.max(axis=1).sum()))
    # best[c]: least damage of the layers so far using at most c extra units
    best = np.zeros(capacity + 1)
    choice = np.zeros((len(names), capacity + 1), dtype=np.int16)
    for li in range(len(names)):
        new = np.full(capacity + 1, np.inf)
        for si in range(len(schemes)):
            e = int(extra[li, si])
            if e > capacity or not ok[li, si]:
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[e:] = best[: capacity + 1 - e] + cost[li, si]
            better = cand < new
            new[better], choice[li, better] = cand[better], si
        best = new
    chosen: dict[str, Scheme] = {}
    c = capacity
    for li in range(len(names) - 1, -1, -1):
        si = int(choice[li, c])
        chosen[names[li]] = schemes[si]
        c -= int(extra[li, si])
    chosen = {n: chosen[n] for n in names}
    total_bits = sum(layer_bits(shapes[n], chosen[n]) for n in names)
    assert total_bits <= Fraction(budget) * n_weights, "allocation over budget"  # guaranteed by the rounding
    return Allocation(chosen, total_bits / n_weights, float(sum(damage[n][chosen[n]] for n in names)), float(budget))


def uniform_options(budget: float, shapes: Shapes, damage: Mapping[str, Mapping[Scheme, float]] | None = None,
                    schemes: Sequence[Scheme] = ALL_SCHEMES) -> pd.DataFrame:
    """Every uniform scheme (one scheme for all layers) at ≤ ``budget`` bits per weight, best first.

    Columns ``scheme, bits, group_size, bits_per_weight`` (+ ``damage`` summed over layers when given).
    Best first: least damage when ``damage`` is given, else most bits per weight.
    """
    schemes = list(dict.fromkeys(schemes))
    _check(budget, shapes, damage, schemes)
    _check_reachable(budget, shapes, schemes)
    n_weights = sum(o * i for o, i in shapes.values())
    rows = []
    for s in schemes:
        total = sum(layer_bits(shp, s) for shp in shapes.values())
        if total > Fraction(budget) * n_weights:
            continue
        row = {"scheme": s.label, "bits": s.n_bits, "group_size": s.group_size, "bits_per_weight": total / n_weights}
        if damage is not None:
            row["damage"] = float(sum(damage[n][s] for n in shapes))
        rows.append(row)
    if not rows:
        smallest = min(model_bits_per_weight(shapes, dict.fromkeys(shapes, s)) for s in schemes)
        raise ValueError(f"budget={budget!r} bits per weight: no uniform scheme fits; the smallest is "
                         f"{smallest:.4f} bits per weight")
    frame = pd.DataFrame(rows)
    key = ["damage", "bits_per_weight"] if damage is not None else ["bits_per_weight"]
    return frame.sort_values(key, ascending=[True, False][: len(key)] if damage is not None else [False],
                             kind="stable").reset_index(drop=True)


def best_uniform(budget: float, shapes: Shapes, damage: Mapping[str, Mapping[Scheme, float]] | None = None,
                 schemes: Sequence[Scheme] = ALL_SCHEMES) -> Scheme:
    """The first row of :func:`uniform_options` as a :class:`Scheme`."""
    row = uniform_options(budget, shapes, damage, schemes).iloc[0]
    gs = row["group_size"]
    return Scheme(int(row["bits"]), None if gs is None or (isinstance(gs, float) and math.isnan(gs)) else int(gs))


def scheme_from_label(label: str) -> Scheme:
    """``'W4 g128'`` / ``'W3 per-channel'`` (as :attr:`Scheme.label` writes them) -> :class:`Scheme`."""
    for s in ALL_SCHEMES:
        if s.label == label:
            return s
    bits, _, group = str(label).partition(" ")
    try:
        if not (bits.startswith("W") and (group == "per-channel" or group.startswith("g"))):
            raise ValueError(label)
        return Scheme(int(bits[1:]), None if group == "per-channel" else int(group[1:]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"label={label!r}: expected 'W<bits> g<group size>' or 'W<bits> per-channel', "
                         f"e.g. 'W4 g128'") from e


@contextmanager
def rtn_mixed(model: nn.Module, schemes: Mapping[str, Scheme]) -> Iterator[nn.Module]:
    """Inside the block, each named decoder linear holds its RTN-dequantized weight in its own scheme.

    The weights are checked and computed before any is replaced, and restored on exit (also on error):
    the model is never left half quantized.
    """
    linears = decoder_linears(model)
    unknown = [n for n in schemes if n not in linears]
    if unknown:
        raise ValueError(f"schemes names {unknown[0]!r}, which is not a decoder linear of this model "
                         f"({len(unknown)} unknown names)")
    bad = [n for n, s in schemes.items() if not isinstance(s, Scheme)]
    if bad:
        raise TypeError(f"schemes[{bad[0]!r}] = {schemes[bad[0]]!r}: must be a Scheme(n_bits, group_size)")
    new = {n: rtn_grid_quantize(linears[n].weight.detach(), s.n_bits, s.group_size).dequantize(
        linears[n].weight.dtype) for n, s in schemes.items()}
    with swapped_weights(linears, new):
        yield model


@contextmanager
def swapped_weights(linears: Mapping[str, nn.Module], new: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, ``linears[name].weight`` holds ``new[name]``; the old weights come back on exit (also on
    error). Compute every new weight before entering, so that a failure cannot leave the model half changed."""
    saved = {n: linears[n].weight.detach().clone() for n in new}
    try:
        with torch.no_grad():
            for n, w in new.items():
                linears[n].weight.copy_(w)
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                linears[n].weight.copy_(w)
