"""The bit allocator on synthetic layers: exact size accounting, budget respected, monotone, bad input refused."""
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.diagnose.allocate import (ALL_SCHEMES, Scheme, allocate, best_uniform, layer_bits, model_bits_per_weight,
                                      uniform_options)
from qtutor.pipeline.compare import WeightFormat

SHAPES = {"a": (576, 576), "b": (192, 576), "c": (576, 1536), "d": (1536, 576)}


def _damage(shapes, weights):
    """Damage falling with bits and with smaller groups, scaled per layer (a layer-sensitivity stand-in)."""
    return {n: {s: weights[i] * 4.0 ** -s.n_bits * (1 + (s.group_size or 4096) / 256) for s in ALL_SCHEMES}
            for i, n in enumerate(shapes)}


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: s.label.replace(" ", "-"))
@pytest.mark.parametrize("shape", [(576, 576), (192, 576), (576, 1536)], ids=str)
def test_bits_match_weight_format(scheme, shape):
    fmt = WeightFormat(scheme.n_bits, scheme.group_size)
    assert layer_bits(shape, scheme) == pytest.approx(fmt.bits_per_weight(shape[1]) * shape[0] * shape[1], rel=1e-12)


def test_short_last_group_counted():
    # 576 = 4 × 128 + 64: five groups, each an fp16 scale and a 4-bit zero-point
    assert layer_bits((1, 576), Scheme(4, 128)) == 4 * 576 + 5 * 20


@pytest.mark.parametrize("budget", [2.2, 3.0, 3.5, 4.25, 6.0, 9.0])
def test_budget_respected_exactly(budget):
    alloc = allocate(_damage(SHAPES, [1, 5, 2, 0.5]), SHAPES, budget)
    n = sum(o * i for o, i in SHAPES.values())
    total = sum(layer_bits(SHAPES[k], s) for k, s in alloc.schemes.items())
    assert total <= Fraction(budget) * n
    assert alloc.bits_per_weight == model_bits_per_weight(SHAPES, alloc.schemes) <= budget


def test_allocation_beats_every_uniform_scheme_that_fits():
    damage = _damage(SHAPES, [1, 50, 2, 0.5])
    for budget in (3.0, 3.5, 4.25):
        alloc = allocate(damage, SHAPES, budget)
        uni = uniform_options(budget, SHAPES, damage)
        assert alloc.damage <= uni["damage"].min()
        assert uni["bits_per_weight"].max() <= budget


def test_exact_on_a_small_case_by_brute_force():
    import itertools

    shapes = {"a": (64, 96), "b": (32, 96)}
    schemes = [Scheme(2, 32), Scheme(3, None), Scheme(4, 32), Scheme(8, None)]
    damage = {"a": dict(zip(schemes, [9.0, 4.0, 1.0, 0.1])), "b": dict(zip(schemes, [3.0, 2.5, 0.2, 0.0]))}
    n = sum(o * i for o, i in shapes.values())
    for budget in (2.6, 3.2, 4.0, 5.0, 6.5, 8.2):
        best = min(damage["a"][x] + damage["b"][y] for x, y in itertools.product(schemes, schemes)
                   if layer_bits(shapes["a"], x) + layer_bits(shapes["b"], y) <= budget * n)
        assert allocate(damage, shapes, budget, schemes, resolution=1 << 20).damage == pytest.approx(best)


def test_degenerate_cases():
    one = {"only": (8, 32)}
    s = [Scheme(4, None)]
    a = allocate({"only": {s[0]: 1.0}}, one, 10.0, s)
    assert a.schemes == {"only": s[0]} and a.damage == 1.0
    # budget exactly at the smallest option: every layer in its cheapest scheme
    smallest = model_bits_per_weight(SHAPES, dict.fromkeys(SHAPES, Scheme(2, None)))
    a = allocate(_damage(SHAPES, [1, 1, 1, 1]), SHAPES, smallest)
    assert set(a.schemes.values()) == {Scheme(2, None)}
    # a huge budget: every layer at its least damage
    a = allocate(_damage(SHAPES, [1, 1, 1, 1]), SHAPES, 100.0)
    assert set(a.schemes.values()) == {Scheme(8, 32)}
    assert best_uniform(100.0, SHAPES) == Scheme(8, 32)


@pytest.mark.parametrize("budget, match", [
    (-1.0, r"budget=-1\.0: must be a finite number of bits per weight > 0"),
    (0, r"budget=0"),
    (float("nan"), r"budget=nan"),
    (float("inf"), r"budget=inf"),
    ("4", r"budget='4'"),
    (True, r"budget=True"),
    (2.0, r"budget=2\.0 bits per weight is below the smallest allowed: 2\.0\d+"),
])
def test_bad_budget(budget, match):
    with pytest.raises(ValueError, match=match):
        allocate(_damage(SHAPES, [1, 1, 1, 1]), SHAPES, budget)
    with pytest.raises(ValueError, match=match):
        uniform_options(budget, SHAPES)


def test_bad_damage_and_schemes():
    damage = _damage(SHAPES, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"no entry for layer 'd'"):
        allocate({k: v for k, v in damage.items() if k != "d"}, SHAPES, 4.0)
    damage["a"][Scheme(3, 64)] = math.nan
    with pytest.raises(ValueError, match=r"damage\['a'\]\[W3 g64\] = nan"):
        allocate(damage, SHAPES, 4.0)
    with pytest.raises(ValueError, match=r"n_bits=1: must be an integer from 2 to 8"):
        Scheme(1, 32)
    with pytest.raises(ValueError, match=r"group_size=0"):
        Scheme(4, 0)
    with pytest.raises(ValueError, match=r"resolution=0"):
        allocate(_damage(SHAPES, [1, 1, 1, 1]), SHAPES, 4.0, resolution=0)


layers = st.lists(st.tuples(st.sampled_from([32, 64, 192]), st.sampled_from([32, 96, 160]),
                            st.floats(0.01, 100.0)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(layers, st.floats(2.0, 10.0), st.floats(0.0, 3.0))
def test_property_budget_and_monotone(spec, budget, step):
    shapes = {f"l{i}": (o, i_) for i, (o, i_, _) in enumerate(spec)}
    damage = _damage(shapes, [w for *_, w in spec])
    smallest = model_bits_per_weight(shapes, {n: min(ALL_SCHEMES, key=lambda s: layer_bits(shp, s))
                                              for n, shp in shapes.items()})
    if budget < smallest:
        with pytest.raises(ValueError, match="below the smallest allowed"):
            allocate(damage, shapes, budget)
        return
    low = allocate(damage, shapes, budget, resolution=4096)
    high = allocate(damage, shapes, budget + step, resolution=4096)
    assert low.bits_per_weight <= budget and high.bits_per_weight <= budget + step
    assert high.damage <= low.damage + 1e-12
    uni = uniform_options(budget, shapes, damage) if budget >= min(
        model_bits_per_weight(shapes, dict.fromkeys(shapes, s)) for s in ALL_SCHEMES) else None
    if uni is not None:
        # the discretisation can leave ≤ one unit per layer unspent, so compare with a uniform scheme that
        # fits with that margin to spare
        n = sum(o * i for o, i in shapes.values())
        sizes = [layer_bits(s, sc) / (s[0] * s[1]) for s in shapes.values() for sc in ALL_SCHEMES]
        margin = len(shapes) * (max(sizes) - min(sizes)) / 4096 + 1 / n
        fits = uni[uni["bits_per_weight"] <= budget - margin]
        if len(fits):
            assert low.damage <= fits["damage"].min() + 1e-12


# --- labels and applying an allocation ---------------------------------------------------------

@pytest.mark.parametrize("scheme", ALL_SCHEMES + (Scheme(5, 16),))
def test_scheme_from_label_round_trips(scheme):
    from qtutor.diagnose.allocate import scheme_from_label

    assert scheme_from_label(scheme.label) == scheme


@pytest.mark.parametrize("label", ["", "W4", "4 g128", "W4 g", "W0 g128", "W4 g0", None])
def test_scheme_from_label_rejects(label):
    from qtutor.diagnose.allocate import scheme_from_label

    with pytest.raises(ValueError, match="label|n_bits|group_size"):
        scheme_from_label(label)


def test_rtn_mixed_applies_each_scheme_and_restores(tiny_llama):
    import torch

    from qtutor.diagnose.allocate import rtn_mixed
    from qtutor.model.walk import decoder_linears
    from qtutor.primitives.grid import rtn_grid_quantize

    linears = decoder_linears(tiny_llama)
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    names = list(linears)
    schemes = {names[0]: Scheme(2, 32), names[1]: Scheme(8, None)}
    with rtn_mixed(tiny_llama, schemes):
        for n, m in linears.items():
            want = (rtn_grid_quantize(before[n], schemes[n].n_bits, schemes[n].group_size).dequantize()
                    if n in schemes else before[n])
            assert torch.equal(m.weight, want), n
    assert all(torch.equal(m.weight, before[n]) for n, m in linears.items())
    with pytest.raises(RuntimeError, match="inside"):
        with rtn_mixed(tiny_llama, schemes):
            raise RuntimeError("inside")
    assert all(torch.equal(m.weight, before[n]) for n, m in linears.items())


def test_rtn_mixed_rejects_bad_input_before_touching_the_model(tiny_llama):
    import torch

    from qtutor.diagnose.allocate import rtn_mixed
    from qtutor.model.walk import decoder_linears

    linears = decoder_linears(tiny_llama)
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    first = next(iter(linears))
    with pytest.raises(ValueError, match="not a decoder linear"):
        with rtn_mixed(tiny_llama, {first: Scheme(4, 32), "lm_head": Scheme(4, 32)}):
            pass
    with pytest.raises(TypeError, match="must be a Scheme"):
        with rtn_mixed(tiny_llama, {first: (4, 32)}):
            pass
    assert all(torch.equal(m.weight, before[n]) for n, m in linears.items())
