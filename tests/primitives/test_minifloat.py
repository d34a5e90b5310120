"""Minifloat encode/decode: bit-exact with torch's float8 casts on every bfloat16 input, with torchao's FP6/FP4."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.primitives.minifloat import (
    E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FORMATS, FloatFormat, NaNEncoding,
    decode, encode, max_finite, min_subnormal, representable_values, round_to_format,
)

TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}

# name: (max finite, smallest positive, number of distinct finite values)
TABLE = {
    "e4m3": (448.0, 2.0**-9, 253),  # 256 codes − 2 NaN − one of ±0
    "e5m2": (57344.0, 2.0**-16, 247),  # 256 − 6 NaN − 2 Inf − one of ±0
    "e2m1": (6.0, 0.5, 15),
    "e3m2": (28.0, 2.0**-4, 63),
    "e2m3": (7.5, 2.0**-3, 63),
    "e8m0": (2.0**127, 2.0**-127, 255),
}


def all_bf16_as_f32() -> torch.Tensor:
    """All 2^16 bfloat16 bit patterns upcast to float32 (±0, subnormals, normals, ±Inf, NaNs)."""
    return torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()


def torch_codes(x: torch.Tensor, name: str) -> torch.Tensor:
    return x.to(TORCH_FP8[name]).view(torch.uint8)


def assert_same_floats(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same NaN positions, same bit patterns elsewhere (so −0.0 ≠ +0.0)."""
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.equal(a[~a.isnan()].view(torch.int32), b[~b.isnan()].view(torch.int32))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_format_table(name):
    fmt = FORMATS[name]
    top, tiny, count = TABLE[name]
    assert max_finite(fmt) == top and min_subnormal(fmt) == tiny
    v = representable_values(fmt)
    assert len(v) == count and bool((v[1:] > v[:-1]).all()) and float(v[-1]) == top


def test_e2m1_values_by_hand():
    assert representable_values(E2M1).tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
@pytest.mark.parametrize("saturate", [True, False], ids=["saturate", "no-saturate"])
def test_every_bf16_pattern_bit_exact_with_torch(name, saturate):
    """torch 2.13's e4m3fn cast saturates (±Inf too); its e5m2 cast overflows to ±Inf. NaN keeps its sign."""
    fmt, x = FORMATS[name], all_bf16_as_f32()
    ours = encode(x, fmt, saturate=saturate)
    top = max_finite(fmt)
    if name == "e4m3" and not saturate:
        # the non-saturating rule: whatever rounds past 448 (|x| beyond the tie 464, and ±Inf) is NaN, signed
        expected = torch_codes(x, name)
        expected = torch.where(x.abs() > 464, (expected & 0x80) | 0x7F, expected)
    elif name == "e5m2" and saturate:
        expected = torch_codes(x.clamp(-top, top), name)  # clamp keeps NaN
    else:
        expected = torch_codes(x, name)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_every_code_decodes_as_torch(name):
    codes = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    assert_same_floats(decode(codes, FORMATS[name]), codes.view(TORCH_FP8[name]).float())


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_property_random_float32_bits_match_torch(words):
    x = torch.tensor(words, dtype=torch.int64).to(torch.int32).view(torch.float32)
    assert torch.equal(encode(x, E4M3, saturate=True), torch_codes(x, "e4m3"))
    assert torch.equal(encode(x, E5M2, saturate=False), torch_codes(x, "e5m2"))


def test_overflow_and_ties_by_hand():
    x = torch.tensor([448.0, 464.0, 464.01, 480.0, float("inf"), -1e6])
    assert decode(encode(x, E4M3, saturate=True), E4M3).tolist() == [448, 448, 448, 448, 448, -448]
    nonsat = decode(encode(x, E4M3, saturate=False), E4M3)
    assert nonsat[:2].tolist() == [448, 448] and bool(nonsat[2:].isnan().all())  # 464 is a tie: to even, 448
    y = torch.tensor([57344.0, 61439.0, 61440.0, float("-inf")])
    assert decode(encode(y, E5M2, saturate=False), E5M2).tolist() == [57344, 57344, float("inf"), float("-inf")]
    assert decode(encode(y, E5M2, saturate=True), E5M2).tolist() == [57344, 57344, 57344, -57344]
    # ties to even, in the normal and the subnormal range: 2.5 -> 2, 3.5 -> 4, 0.25 -> 0, 0.75 -> 1
    assert round_to_format(torch.tensor([2.5, 3.5, 0.25, 0.75, 5.0, 100.0]), E2M1).tolist() == [2, 4, 0, 1, 4, 6]
    assert round_to_format(torch.tensor([2.0**-10, 3 * 2.0**-10]), E4M3).tolist() == [0, 2.0**-8]


@pytest.mark.parametrize("fmt", [E2M1, E3M2, E2M3], ids=lambda f: f.name)
def test_fp6_fp4_bit_exact_with_torchao(fmt):
    """torchao's ``_f32_to_floatx_unpacked`` (RNE, saturating, no NaN) over every non-NaN bfloat16."""
    pytest.importorskip("torchao")
    from torchao.prototype.custom_fp_utils import _f32_to_floatx_unpacked, _floatx_unpacked_to_f32

    x = all_bf16_as_f32()
    x = x[~x.isnan()]
    assert torch.equal(encode(x, fmt), _f32_to_floatx_unpacked(x, fmt.ebits, fmt.mbits))
    codes = torch.arange(2**fmt.n_bits, dtype=torch.int64).to(torch.uint8)
    assert_same_floats(decode(codes, fmt), _floatx_unpacked_to_f32(codes, fmt.ebits, fmt.mbits))


def test_e2m1_against_torch_float4():
    x = torch.tensor([0.5, 6.0])
    try:
        packed = x.to(torch.float4_e2m1fn_x2)
    except (NotImplementedError, RuntimeError) as e:
        pytest.skip(f"torch {torch.__version__} cannot cast to float4_e2m1fn_x2 on the CPU: {e}")
    c = encode(x, E2M1)
    assert packed.view(torch.uint8).tolist() == [int(c[0]) | int(c[1]) << 4]  # first value in the low nibble


def test_e8m0_matches_torch():
    codes = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    assert_same_floats(decode(codes, E8M0), codes.view(torch.float8_e8m0fnu).float())
    x = all_bf16_as_f32()
    pos = x[(x >= 2.0**-126) & torch.isfinite(x)]  # positive float32 normals; 1.5·2^127 up -> NaN in both
    assert torch.equal(encode(pos, E8M0, saturate=False), pos.to(torch.float8_e8m0fnu).view(torch.uint8))
    # ties round up (1.5 -> 2: RNE of a 1-bit significand); below 2^-126 torch rounds every value above 2^-127
    # up to 2^-126, here the nearest of the two: 1.2 · 2^-127 -> 2^-127
    assert encode(torch.tensor([1.5, 3.0, 1.2 * 2.0**-127]), E8M0).tolist() == [128, 129, 0]
    assert encode(torch.tensor([3e38]), E8M0, saturate=True).tolist() == [254]


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1, E3M2, E2M3], ids=lambda f: f.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_property_rounds_to_the_nearest_value(fmt, data):
    top = max_finite(fmt)
    xs = data.draw(st.lists(st.floats(-top, top, width=32), min_size=1, max_size=32))
    x = torch.tensor(xs, dtype=torch.float32)
    r = round_to_format(x, fmt)
    dist = (x[:, None] - representable_values(fmt)[None, :]).abs().min(dim=1).values
    assert torch.equal((x - r).abs(), dist)
    assert torch.equal(round_to_format(r, fmt), r)  # idempotent


def test_bfloat16_and_float16_inputs_are_upcast():
    x = torch.tensor([1.3, -300.0, 1e-3])
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(encode(x.to(dtype), E4M3), encode(x.to(dtype).float(), E4M3))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        encode(torch.zeros(2, dtype=torch.float64), E4M3)
    with pytest.raises(ValueError, match="x has dtype torch.int32"):
        encode(torch.zeros(2, dtype=torch.int32), E4M3)
    with pytest.raises(ValueError, match="e2m1 has no NaN code"):
        encode(torch.tensor([1.0, float("nan")]), E2M1)
    with pytest.raises(ValueError, match="no Inf or NaN: use saturate=True"):
        encode(torch.tensor([7.0]), E2M1, saturate=False)
    with pytest.raises(ValueError, match="unsigned and has no zero"):
        encode(torch.tensor([0.0]), E8M0)
    with pytest.raises(ValueError, match="x must be > 0"):
        encode(torch.tensor([-1.0]), E8M0)
    with pytest.raises(ValueError, match="fmt must be a FloatFormat"):
        encode(torch.zeros(1), "e4m3")
    with pytest.raises(ValueError, match="codes has dtype torch.int64"):
        decode(torch.zeros(1, dtype=torch.int64), E4M3)
    with pytest.raises(ValueError, match=r"codes holds 16, beyond e2m1's 4-bit codes \[0, 15\]"):
        decode(torch.tensor([16], dtype=torch.uint8), E2M1)
    with pytest.raises(ValueError, match="ebits=0"):
        FloatFormat("bad", 0, 3, 1)
    with pytest.raises(ValueError, match="9 bits"):
        FloatFormat("bad", 5, 3, 15)
    with pytest.raises(ValueError, match="has_inf=True"):
        FloatFormat("bad", 4, 3, 7, has_inf=True, nan=NaNEncoding.ALL_ONES)
