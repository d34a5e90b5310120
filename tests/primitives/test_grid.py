"""The shared GPTQ/AWQ weight grid: ``n_groups``, ``group_min_max``, ``rtn_grid_quantize``, ``QuantizedWeight``."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.primitives import PerGroup, QuantSpec, fake_quant
from qtutor.primitives.grid import (
    QuantizedWeight, check_n_bits_group_size, group_min_max, n_groups, rtn_grid_quantize,
)
from qtutor.methods.gptq import GPTQConfig
from qtutor.methods.awq import AWQConfig


def _w(out=24, inp=576, seed=0, std=0.02):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * std


@pytest.mark.parametrize("in_features, group_size, want", [(576, 128, 5), (576, 64, 9), (576, None, 1), (10, 4, 3)])
def test_n_groups(in_features, group_size, want):
    assert n_groups(in_features, group_size) == want


def test_group_min_max_with_a_short_last_group():
    w = _w(4, 10)
    lo, hi = group_min_max(w, 4)  # groups of 4, 4 and 2 columns
    assert lo.shape == hi.shape == (4, 3)
    for g, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        assert torch.equal(lo[:, g], w[:, a:b].amin(1)) and torch.equal(hi[:, g], w[:, a:b].amax(1))
    lo, hi = group_min_max(w, None)
    assert torch.equal(lo[:, 0], w.amin(1)) and torch.equal(hi[:, 0], w.amax(1))


@pytest.mark.parametrize("n_bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, None], ids=lambda g: f"g{g}")
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_rtn_codes_and_round_trip(n_bits, group_size, symmetric):
    w = _w()
    qw = rtn_grid_quantize(w, n_bits, group_size, symmetric)
    assert qw.q.dtype == qw.zero.dtype == torch.uint8 and qw.g_idx.dtype == torch.int32
    assert qw.scale.shape == (24, n_groups(576, group_size)) and qw.g_idx.shape == (576,)
    assert int(qw.q.max()) <= 2**n_bits - 1
    assert not qw.has_act_order
    err = (qw.dequantize() - w).abs()
    step = qw.scale[:, qw.g_idx.long()]
    assert bool((err <= step * 0.5 + 1e-7).all() if not symmetric else (err <= step + 1e-7).all())


def test_agrees_with_quantspec_asymmetric_grid_on_a_real_shaped_weight():
    # every group of a real weight holds both signs with max - min >= 1e-5: the two grids agree bit for bit,
    # short last group (576 = 4.5 x 128) included; they differ only on one-signed or constant groups
    w = _w(192, 576)
    spec = QuantSpec(n_bits=4, symmetric=False, granularity=PerGroup(128))
    assert torch.equal(fake_quant(w, spec), rtn_grid_quantize(w, 4, 128).dequantize())
    lo, hi = group_min_max(w, 128)
    assert bool((lo < 0).all() and (hi > 0).all())


def test_quantspec_and_rtn_differ_on_a_one_signed_group():
    # all positive: QuantSpec widens the range to [0, 2]; rtn keeps [1, 2] but its integer zero-point
    # -round(1 / scale) = -15 is clamped to 0 (as AWQ's reference), so every weight lands on code 15 = 1.0
    w = torch.linspace(1.0, 2.0, 16).repeat(2, 1)
    spec = QuantSpec(n_bits=4, symmetric=False, granularity=PerGroup(16))
    a, b = fake_quant(w, spec), rtn_grid_quantize(w, 4, 16).dequantize()
    assert not torch.equal(a, b)
    assert torch.equal(b, torch.ones_like(w))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_no_groups_is_none_never_0_or_minus_1(bad):
    for call in (lambda: rtn_grid_quantize(_w(4, 16), 4, bad), lambda: group_min_max(_w(4, 16), bad),
                 lambda: n_groups(16, bad), lambda: GPTQConfig(group_size=bad), lambda: AWQConfig(group_size=bad),
                 lambda: PerGroup(bad)):
        with pytest.raises(ValueError, match=f"group_size={bad!r}"):
            call()


@pytest.mark.parametrize("bits", [1, 9, 4.0, None])
def test_n_bits_checked_once_everywhere(bits):
    for call in (lambda: rtn_grid_quantize(_w(4, 16), bits, 8), lambda: GPTQConfig(n_bits=bits),
                 lambda: AWQConfig(n_bits=bits), lambda: QuantSpec(n_bits=bits)):
        with pytest.raises(ValueError, match=r"n_bits=.*from 2 to 8"):
            call()


def test_validator_accepts_the_valid_spellings():
    for n_bits, gs in [(2, None), (8, 1), (4, 128)]:
        check_n_bits_group_size(n_bits, gs)


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        rtn_grid_quantize(torch.randn(16), 4, 8)
    with pytest.raises(ValueError, match="integer codes"):
        rtn_grid_quantize(torch.ones(4, 16, dtype=torch.int32), 4, 8)
    w = _w(4, 16)
    w[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        rtn_grid_quantize(w, 4, 8)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_range_overflowing_float32_is_refused(symmetric):
    w = _w(4, 16)
    w[2, 3], w[2, 4] = 3e38, -3e38
    with pytest.raises(ValueError, match=r"row 2, group 0 .* overflows float32"):
        rtn_grid_quantize(w, 4, 8, symmetric)
    with pytest.raises(ValueError, match="beyond float32"):
        rtn_grid_quantize(torch.full((4, 16), 1e300, dtype=torch.float64), 4, 8, symmetric)


def test_quantized_weight_checks_its_shapes():
    qw = rtn_grid_quantize(_w(4, 16), 4, 8)
    with pytest.raises(ValueError, match="g_idx has shape"):
        QuantizedWeight(qw.q, qw.scale, qw.zero, qw.g_idx[:8], 4, 8)
    with pytest.raises(ValueError, match="scale .* and zero"):
        QuantizedWeight(qw.q, qw.scale[:, :1], qw.zero, qw.g_idx, 4, 8)


finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.sampled_from([3e38, -3e38, 3.4028234e38, -3.4028234e38, 0.0, 1e-40]))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(finite, min_size=8, max_size=8), rows=st.integers(1, 3), bits=st.integers(2, 8),
       symmetric=st.booleans(), group_size=st.sampled_from([None, 3, 8]))
def test_property_finite_weights_give_finite_weights_or_a_reason(values, rows, bits, symmetric, group_size):
    w = torch.tensor(values * rows, dtype=torch.float32).reshape(rows, 8)
    try:
        qw = rtn_grid_quantize(w, bits, group_size, symmetric)
    except ValueError as err:
        assert "overflows float32" in str(err)
    else:
        assert torch.isfinite(qw.dequantize()).all() and torch.isfinite(qw.scale).all()


def test_agrees_with_quantspec_on_every_smollm2_linear(smollm2):
    # the claim, on the real model: 576 = 4.5 x 128 included (checked: all 210 linears, g128 and g64)
    from qtutor.model import decoder_linears

    for name, lin in decoder_linears(smollm2[0]).items():
        w = lin.weight.detach()
        spec = QuantSpec(n_bits=4, symmetric=False, granularity=PerGroup(128))
        assert torch.equal(fake_quant(w, spec), rtn_grid_quantize(w, 4, 128).dequantize()), name
