import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.primitives import (
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    ZeroPoint,
    choose_qparams,
    dequantize,
    fake_quant,
    quantize,
)

GRANULARITIES = {
    "tensor": PerTensor(),
    "channel0": PerChannel(0),
    "channel1": PerChannel(1),
    "token": PerToken(),
    "g16": PerGroup(16),
    "g8_axis0": PerGroup(8, axis=0),
}
KINDS = {
    "sym": dict(symmetric=True),
    "asym_int": dict(symmetric=False, zero_point=ZeroPoint.INTEGER),
    "asym_offset": dict(symmetric=False, zero_point=ZeroPoint.FLOAT),
}


def _spec(bits, kind, gran):
    return QuantSpec(n_bits=bits, granularity=GRANULARITIES[gran], **KINDS[kind])


def _expand(p, x, spec):
    """Broadcast a public-shape parameter back to x's shape."""
    g = spec.granularity
    if isinstance(g, PerGroup):
        return p.repeat_interleave(g.group_size, dim=g.axis % x.ndim)
    return p.expand_as(x)


@pytest.mark.parametrize("gran", GRANULARITIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_error_at_most_half_step(bits, kind, gran, rng):
    x = torch.randn(32, 48, generator=rng) * 3
    spec = _spec(bits, kind, gran)
    qp = choose_qparams(x, spec)
    q = quantize(x, qp, spec)
    assert q.shape == x.shape
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    x_hat = dequantize(q, qp, spec)
    step = _expand(qp.scale, x, spec)
    assert bool(((x - x_hat).abs() <= step / 2 * (1 + 1e-5) + 1e-6).all())


@pytest.mark.parametrize(
    "gran,shape",
    [("tensor", ()), ("channel0", (32, 1)), ("channel1", (1, 48)), ("token", (32, 1)),
     ("g16", (32, 3)), ("g8_axis0", (4, 48))],
)
def test_parameter_shapes(gran, shape):
    x = torch.randn(32, 48)
    qp = choose_qparams(x, _spec(4, "asym_int", gran))
    assert tuple(qp.scale.shape) == shape and tuple(qp.zero_point.shape) == shape


def test_symmetric_int8_known_values():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.27])
    spec = QuantSpec(n_bits=8)
    qp = choose_qparams(x, spec)
    assert qp.scale.item() == pytest.approx(2.0 / 127)
    assert quantize(x, qp, spec).tolist() == [-127, -64, 0, 32, 81]


def test_asymmetric_integer_zero_point_holds_zero():
    x = torch.tensor([0.5, 1.0, 3.0])  # all positive: the range is extended to 0
    spec = QuantSpec(n_bits=4, symmetric=False)
    qp = choose_qparams(x, spec)
    assert qp.zero_point.item() == 0
    assert dequantize(quantize(torch.zeros(3), qp, spec), qp, spec).abs().max() == 0


def test_float_offset_reproduces_its_own_grid():
    """Values already on a Q4_1-style grid (q*d + m) come back exactly."""
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(10, 1, generator=gen) + 0.1
    m = torch.randn(10, 1, generator=gen)
    q = torch.randint(0, 16, (10, 32), generator=gen)
    q[:, 0], q[:, 1] = 0, 15  # each block spans its whole grid
    x = q * d + m
    spec = QuantSpec(n_bits=4, symmetric=False, zero_point=ZeroPoint.FLOAT, granularity=PerGroup(32))
    assert torch.allclose(fake_quant(x, spec), x, atol=1e-6)


def test_all_zero_group_quantizes_to_zero():
    x = torch.zeros(4, 64)
    x[1, 32:] = torch.randn(32)
    for kind in KINDS:
        spec = QuantSpec(n_bits=4, granularity=PerGroup(32), **KINDS[kind])
        out = fake_quant(x, spec)
        assert torch.isfinite(out).all()
        assert out[0].abs().max() == 0 and out[1, :32].abs().max() == 0


def test_constant_group_on_offset_grid_is_exact():
    x = torch.full((2, 32), 0.75)
    spec = QuantSpec(n_bits=4, symmetric=False, zero_point=ZeroPoint.FLOAT, granularity=PerGroup(32))
    assert torch.equal(fake_quant(x, spec), x)


def test_clip_ratio_shrinks_scale():
    x = torch.randn(64, 64)
    full = choose_qparams(x, QuantSpec(n_bits=4)).scale
    clipped = choose_qparams(x, QuantSpec(n_bits=4, clip_ratio=0.5)).scale
    assert clipped.item() == pytest.approx(full.item() / 2)


def test_fake_quant_keeps_dtype():
    x = torch.randn(8, 32, dtype=torch.bfloat16)
    assert fake_quant(x, QuantSpec(n_bits=4, granularity=PerGroup(16))).dtype == torch.bfloat16


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"n_bits=.*2 to 8"):
        QuantSpec(n_bits=bits)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_short_last_group(kind):
    # 576 = 4.5 x 128 (SmolLM2's hidden size): four groups of 128 and one of 64, as GPTQ's reference
    x = torch.randn(6, 576, generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(n_bits=4, granularity=PerGroup(128), **KINDS[kind])
    qp = choose_qparams(x, spec)
    assert qp.scale.shape == (6, 5)
    out = fake_quant(x, spec)
    assert out.shape == x.shape
    # the short group is quantized exactly as a 64-wide tensor on its own
    tail = fake_quant(x[:, 512:].contiguous(), QuantSpec(n_bits=4, granularity=PerGroup(64), **KINDS[kind]))
    assert torch.equal(out[:, 512:], tail)
    head = fake_quant(x[:, :512].contiguous(), spec)
    assert torch.equal(out[:, :512], head)


def test_short_last_group_along_axis0():
    x = torch.randn(40, 3)
    spec = QuantSpec(n_bits=4, granularity=PerGroup(16, axis=0))
    qp = choose_qparams(x, spec)
    assert qp.scale.shape == (3, 3)
    q = quantize(x, qp, spec)
    assert q.shape == x.shape and dequantize(q, qp, spec).shape == x.shape


@pytest.mark.parametrize("bad", [0, -1, None, 2.0, True], ids=repr)
def test_group_size_positive(bad):
    with pytest.raises(ValueError, match=f"group_size={bad!r}"):
        PerGroup(bad)


def test_no_groups_is_spelled_none():
    with pytest.raises(ValueError, match=r"spelled None.*never 0 or -1"):
        PerGroup(-1)


def test_granularity_passed_as_symmetric_is_refused():
    # QuantSpec(4, PerGroup(128)) reads the granularity as `symmetric`: a silent per-tensor grid before
    with pytest.raises(ValueError, match=r"symmetric=PerGroup.*granularity=PerGroup\(128\)"):
        QuantSpec(4, PerGroup(128))


def test_integer_input_rejected():
    with pytest.raises(ValueError, match=r"x has dtype torch.int8"):
        choose_qparams(torch.ones(4, dtype=torch.int8), QuantSpec())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_rejected(bad):
    x = torch.randn(4, 4)
    x[2, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf.*\[2, 3\]"):
        fake_quant(x, QuantSpec())


def test_bad_clip_ratio_and_axis():
    with pytest.raises(ValueError, match="clip_ratio"):
        QuantSpec(clip_ratio=1.5)
    with pytest.raises(ValueError, match="axis=2"):
        choose_qparams(torch.randn(4, 4), QuantSpec(granularity=PerChannel(2)))


def test_dequantize_rejects_float_codes():
    spec = QuantSpec()
    qp = choose_qparams(torch.randn(4), spec)
    with pytest.raises(ValueError, match="integer codes"):
        dequantize(torch.randn(4), qp, spec)


# --- properties --------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(finite, min_size=1, max_size=64),
    bits=st.integers(2, 8),
    kind=st.sampled_from(sorted(KINDS)),
)
def test_property_round_trip_within_half_step(values, bits, kind):
    x = torch.tensor(values, dtype=torch.float32)
    spec = QuantSpec(n_bits=bits, **KINDS[kind])
    qp = choose_qparams(x, spec)
    err = (dequantize(quantize(x, qp, spec), qp, spec) - x).abs()
    assert bool((err <= qp.scale / 2 * (1 + 1e-4) + 1e-3 * qp.scale + 1e-30).all())


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=64), bits=st.integers(2, 8))
def test_property_symmetric_codes_centred_on_zero(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    spec = QuantSpec(n_bits=bits)
    qp = choose_qparams(x, spec)
    assert torch.equal(quantize(-x, qp, spec), -quantize(x, qp, spec))
    assert int(quantize(x, qp, spec).abs().max()) <= 2 ** (bits - 1) - 1


# --- finite input never turns into NaN silently ------------------------------

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_float64_beyond_float32_is_refused(kind):
    x = torch.tensor([1e300, -2.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"beyond float32's largest finite value"):
        fake_quant(x, QuantSpec(n_bits=8, **KINDS[kind]))


@pytest.mark.parametrize("kind", ["asym_int", "asym_offset"])
def test_asymmetric_range_that_overflows_is_refused(kind):
    x = torch.tensor([3e38, -3e38, 1.0])  # each finite, max - min = Inf in float32
    with pytest.raises(ValueError, match=r"range of x \(min -3e\+38, max 3e\+38.*overflows float32"):
        choose_qparams(x, QuantSpec(n_bits=4, **KINDS[kind]))


def test_symmetric_end_code_that_overflows_is_refused():
    x = torch.tensor([torch.finfo(torch.float32).max, 1.0])
    spec = QuantSpec(n_bits=8)
    try:
        out = fake_quant(x, spec)
    except ValueError as err:
        assert "overflows float32" in str(err)
    else:
        assert torch.isfinite(out).all()


huge = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([3e38, -3e38, 3.4028234e38, -3.4028234e38, 1e38, -1e-45, 0.0]),
)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(huge, min_size=1, max_size=40), bits=st.integers(2, 8), kind=st.sampled_from(sorted(KINDS)),
       gran=st.sampled_from(["tensor", "g8"]))
def test_property_finite_float32_input_gives_finite_output_or_a_reason(values, bits, kind, gran):
    x = torch.tensor(values, dtype=torch.float32)
    g = PerTensor() if gran == "tensor" else PerGroup(8)
    try:
        out = fake_quant(x, QuantSpec(n_bits=bits, granularity=g, **KINDS[kind]))
    except ValueError as err:
        assert "overflows float32" in str(err)
    else:
        assert torch.isfinite(out).all(), (values, out)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20),
       kind=st.sampled_from(sorted(KINDS)))
def test_property_finite_float64_input_gives_finite_output_or_a_reason(values, kind):
    x = torch.tensor(values, dtype=torch.float64)
    try:
        out = fake_quant(x, QuantSpec(n_bits=4, **KINDS[kind]))
    except ValueError as err:
        assert "float32" in str(err)
    else:
        assert torch.isfinite(out).all()
