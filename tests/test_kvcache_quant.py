"""KIVI KV-cache quantization primitives: per-channel keys, per-token values, packing, FP8 E4M3."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.kvcache.quant import FP8_E4M3_MAX, dequantize_keys, dequantize_values, fp8_decode, fp8_encode, \
    pack_codes, quantize_keys, quantize_values, unpack_codes
from qtutor.primitives import pack

BITS = (2, 4, 8)
FEW = settings(max_examples=40, deadline=None)


def _states(seed, B=2, H=3, T=16, D=16):
    """Random states with KIVI-like outliers: a channel far from 0 with a narrow spread, a wide channel, a hot token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, T, D, generator=g)
    x[..., 1] = 40 + 0.3 * torch.randn(B, H, T, generator=g)  # narrow group far from 0: float16 min rounding matters
    x[..., 5] *= 20
    x[:, :, 3, :] *= 8
    return x


def _check_bound(x, xhat, scale, dim):
    """|x - x̂| ≤ scale/2 per element (scale broadcast over its group), up to float32 rounding."""
    G = x.shape[dim] // scale.shape[dim]
    half = scale.float().repeat_interleave(G, dim=dim) / 2
    err = (x.float() - xhat).abs()
    slack = 1e-6 * (1 + x.float().abs())
    assert (err <= half + slack).all(), f"max excess {(err - half).max().item():.3g}"
    return err, half


# --- error bound, shapes, code range ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [1, 4, 16])
def test_keys_error_bound_and_shapes(bits, group_size):
    k = _states(bits * 100 + group_size)
    B, H, T, D = k.shape
    codes, scale, mn = quantize_keys(k, bits, group_size)
    assert codes.dtype == torch.uint8 and codes.shape == (B, H, T, D * bits // 8)
    assert scale.dtype == mn.dtype == torch.float16
    assert scale.shape == mn.shape == (B, H, T // group_size, D)
    assert (scale > 0).all()
    assert int(unpack_codes(codes, bits).max()) < 2**bits
    khat = dequantize_keys(codes, scale, mn, bits)
    assert khat.shape == k.shape and khat.dtype == torch.float32
    err, half = _check_bound(k, khat, scale, dim=2)
    if group_size > 1:  # the bound is nearly attained somewhere: it is not vacuous
        assert (err / half).max() > 0.5
    # the per-channel grouping: a group's minimum is at most its smallest element (min rounded down to float16)
    lo = k.unflatten(2, (T // group_size, group_size)).amin(3)
    assert (mn.float() <= lo).all()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [1, 4, 16])
def test_values_error_bound_and_shapes(bits, group_size):
    v = _states(bits * 100 + group_size + 7, T=5)  # any number of tokens
    B, H, T, D = v.shape
    codes, scale, mn = quantize_values(v, bits, group_size)
    assert codes.dtype == torch.uint8 and codes.shape == (B, H, T, D * bits // 8)
    assert scale.dtype == mn.dtype == torch.float16
    assert scale.shape == mn.shape == (B, H, T, D // group_size)
    assert int(unpack_codes(codes, bits).max()) < 2**bits
    vhat = dequantize_values(codes, scale, mn, bits, dtype=torch.float16)
    assert vhat.dtype == torch.float16
    _check_bound(v, dequantize_values(codes, scale, mn, bits), scale, dim=3)


@pytest.mark.parametrize("bits", BITS)
def test_narrow_group_far_from_zero_keeps_the_bound(bits):
    # lo = 100.05 rounds *up* to 100.0625 in float16; a min stored that way leaves x = lo 0.0125 away from code 0,
    # far more than scale / 2 (≈ 0.0009 at 8 bits): the min must be rounded down
    k = torch.linspace(100.05, 100.5, 8).reshape(1, 1, 8, 1).repeat(1, 1, 1, 4)
    codes, scale, mn = quantize_keys(k, bits, 8)
    assert (mn.float() <= 100.05).all()
    _check_bound(k, dequantize_keys(codes, scale, mn, bits), scale, dim=2)
    v = k.transpose(2, 3).contiguous()  # the same numbers along channels, for values
    codes, scale, mn = quantize_values(v, bits, 8)
    _check_bound(v, dequantize_values(codes, scale, mn, bits), scale, dim=3)


@pytest.mark.parametrize("bits", BITS)
def test_constant_groups_reconstruct_exactly(bits):
    consts = torch.tensor([0.0, 1.5, -3.25, 1000.0, -0.125, 7.0, 65504.0, -65504.0])  # float16-representable
    k = consts.expand(2, 1, 8, 8).contiguous()  # every channel constant over the 8 tokens of its group
    codes, scale, mn = quantize_keys(k, bits, 4)
    assert torch.equal(dequantize_keys(codes, scale, mn, bits), k)
    assert (unpack_codes(codes, bits) == 0).all()
    v = consts.reshape(1, 1, 8, 1).expand(2, 1, 8, 8).contiguous()  # every token constant over its channels
    codes, scale, mn = quantize_values(v, bits, 4)
    assert torch.equal(dequantize_values(codes, scale, mn, bits), v)
    # a constant float16 cannot hold: still within the bound
    k = torch.full((1, 1, 4, 4), 0.1)
    codes, scale, mn = quantize_keys(k, bits, 4)
    _check_bound(k, dequantize_keys(codes, scale, mn, bits), scale, dim=2)


def test_keys_are_per_channel_and_values_per_token():
    x = torch.zeros(1, 1, 4, 4)
    x[..., 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # a key channel spanning [0, 3]; the rest constant 0
    _, scale, _ = quantize_keys(x, 2, 4)
    assert scale[0, 0, 0].tolist() == [1.0, 1.0, 1.0, 1.0]  # channel 0: 3/3; constant channels: the 1.0 stand-in
    codes, scale, mn = quantize_values(x, 2, 2)  # token t: channels [t, 0 | 0, 0]
    assert scale[0, 0, :, 0].float().tolist() == pytest.approx([1.0, 1 / 3, 2 / 3, 1.0], rel=2e-3)  # t / 3, t=0: 1.0
    assert scale[0, 0, :, 1].tolist() == [1.0] * 4 and mn[0, 0].tolist() == [[0.0, 0.0]] * 4
    _check_bound(x, dequantize_values(codes, scale, mn, 2), scale, dim=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    k = _states(3).to(dtype)
    codes, scale, mn = quantize_keys(k, 4, 8)
    _check_bound(k, dequantize_keys(codes, scale, mn, 4), scale, dim=2)


@FEW
@given(bits=st.sampled_from(BITS), group_size=st.sampled_from([1, 2, 4, 8]), n_groups=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1), loc=st.floats(-3000, 3000), spread=st.floats(1e-4, 300))
def test_bound_property(bits, group_size, n_groups, seed, loc, spread):
    g = torch.Generator().manual_seed(seed)
    x = loc + spread * torch.randn(1, 2, group_size * n_groups, 8, generator=g)
    codes, scale, mn = quantize_keys(x, bits, group_size)
    assert int(unpack_codes(codes, bits).max()) < 2**bits
    _check_bound(x, dequantize_keys(codes, scale, mn, bits), scale, dim=2)
    codes, scale, mn = quantize_values(x, bits, group_size)
    _check_bound(x, dequantize_values(codes, scale, mn, bits), scale, dim=3)


@FEW
@given(bits=st.sampled_from(BITS),
       vals=st.lists(st.floats(-65504, 65504, allow_nan=False, width=32), min_size=16, max_size=16))
def test_bound_property_adversarial_values(bits, vals):
    x = torch.tensor(vals).reshape(1, 1, 4, 4)
    codes, scale, mn = quantize_keys(x, bits, 4)
    assert torch.isfinite(scale).all() and torch.isfinite(mn).all()
    _check_bound(x, dequantize_keys(codes, scale, mn, bits), scale, dim=2)
    codes, scale, mn = quantize_values(x, bits, 4)
    _check_bound(x, dequantize_values(codes, scale, mn, bits), scale, dim=3)


# --- packing ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(8,), (3, 16), (2, 3, 5, 64)])
def test_pack_round_trip_and_matches_primitives_pack(bits, shape):
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == shape[:-1] + (shape[-1] * bits // 8,)
    assert torch.equal(unpack_codes(packed, bits), codes)
    assert torch.equal(packed, pack(codes, bits))  # qtutor.primitives.pack, uint8 words
    assert torch.equal(pack_codes(codes.long(), bits), packed)  # any integer dtype in


@FEW
@given(bits=st.sampled_from(BITS), data=st.data())
def test_pack_property(bits, data):
    per = 8 // bits
    n = per * data.draw(st.integers(1, 6))
    vals = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n))
    codes = torch.tensor(vals, dtype=torch.uint8)
    assert torch.equal(pack_codes(codes, bits), pack(codes, bits))
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits), codes)


def test_pack_layout_is_little_endian():
    assert pack_codes(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]  # channel 0 in the low nibble
    assert pack_codes(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_codes(torch.tensor([7, 200], dtype=torch.uint8), 8).tolist() == [7, 200]


@pytest.mark.parametrize("bits,d", [(4, 3), (2, 6)])
def test_pack_needs_whole_bytes(bits, d):
    with pytest.raises(ValueError, match=f"head_dim={d}"):
        pack_codes(torch.zeros(2, d, dtype=torch.uint8), bits)
    with pytest.raises(ValueError, match=f"head_dim={d}"):
        quantize_values(torch.randn(1, 1, 2, d), bits, 1)


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 16, 1, 0, True, 4.0, "4", None])
def test_bad_bits(bits):
    x = torch.randn(1, 1, 4, 8)
    for fn in (lambda: quantize_keys(x, bits, 4), lambda: quantize_values(x, bits, 4),
               lambda: pack_codes(torch.zeros(8, dtype=torch.uint8), bits),
               lambda: unpack_codes(torch.zeros(8, dtype=torch.uint8), bits)):
        with pytest.raises(ValueError, match=f"bits={bits!r}"):
            fn()


@pytest.mark.parametrize("group_size", [0, -4, True, 2.0, None])
def test_bad_group_size(group_size):
    x = torch.randn(1, 1, 4, 8)
    for fn in (quantize_keys, quantize_values):
        with pytest.raises(ValueError, match=f"group_size={group_size!r}"):
            fn(x, 4, group_size)


def test_keys_need_whole_token_groups_and_values_whole_channel_groups():
    with pytest.raises(ValueError, match="10 tokens.*group_size=4"):
        quantize_keys(torch.randn(1, 2, 10, 8), 4, 4)
    with pytest.raises(ValueError, match="head_dim=12.*group_size=8"):
        quantize_values(torch.randn(1, 2, 3, 12), 4, 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_states_raise(bad):
    x = torch.randn(1, 1, 4, 8)
    x[0, 0, 2, 3] = bad
    for fn in (lambda: quantize_keys(x, 4, 4), lambda: quantize_values(x, 4, 4), lambda: fp8_encode(x),
               lambda: quantize_keys(x.half(), 8, 2)):
        with pytest.raises(ValueError, match="inf or NaN"):
            fn()


def test_states_beyond_float16_range_raise_instead_of_returning_inf():
    # the min and scale are float16: a min of -1e5 would be stored as -inf and every value decode to NaN
    x = torch.randn(1, 1, 4, 8)
    x[0, 0, 0, 0] = -1e5
    for fn in (lambda: quantize_keys(x, 8, 4), lambda: quantize_values(x, 2, 4)):
        with pytest.raises(ValueError, match="65504"):
            fn()
    x[0, 0, 0, 0] = -65504.0  # the edge itself is fine
    codes, scale, mn = quantize_keys(x, 8, 4)
    _check_bound(x, dequantize_keys(codes, scale, mn, 8), scale, dim=2)


# --- FP8 E4M3 -----------------------------------------------------------------------------------------------------

def _fp8_bytes(t):
    return t.view(torch.uint8)


def test_fp8_encode_is_bit_exact_with_a_saturating_cast_for_every_float16():
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    x = x[torch.isfinite(x)]  # every finite float16, ±0 and subnormals included
    ref = x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    enc = fp8_encode(x)
    assert enc.dtype == torch.float8_e4m3fn
    assert torch.equal(_fp8_bytes(enc), _fp8_bytes(ref))
    assert not torch.isnan(fp8_decode(enc)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_encode_bit_exact_random(dtype):
    x = (torch.randn(4096, generator=torch.Generator().manual_seed(0)) * torch.logspace(-6, 4, 4096)).to(dtype)
    ref = x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    assert torch.equal(_fp8_bytes(fp8_encode(x)), _fp8_bytes(ref))


def test_fp8_saturates_instead_of_nan():
    x = torch.tensor([448.0, 449.0, 464.0, 500.0, 1e4, 3e38, -449.0, -1e30])
    dec = fp8_decode(fp8_encode(x))
    assert dec.tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, 448.0, -448.0, -448.0]


def test_fp8_scale_and_round_trip():
    x = torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(1)) * 300
    enc = fp8_encode(x, scale=4.0)
    ref = (x / 4.0).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    assert torch.equal(_fp8_bytes(enc), _fp8_bytes(ref))
    dec = fp8_decode(enc, scale=4.0, dtype=torch.float16)
    assert dec.dtype == torch.float16 and torch.equal(dec.float(), enc.float() * 4.0)
    # 3 mantissa bits: relative error ≤ 2**-4 for normal numbers (|x / scale| ≥ 2**-6) below saturation
    normal = (x / 4.0).abs() >= 2**-6
    rel = ((fp8_decode(enc, 4.0) - x).abs() / x.abs())[normal]
    assert rel.max() <= 2**-4
