"""The quantized-KV flash-decoding kernel against its PyTorch reference (interpreter on CPU, compiled on GPU)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.kernels.kv_decode import (dequantize_k_ref, dequantize_v_ref, kv_decode_attention, kv_decode_ref,
                                      quantize_kv_ref)
from tolerances import rel_err  # tests/kernels/tolerances.py

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Kernel and reference dequantize the same codes in float32 and sum in float32 (in another order, with
# split softmax maxima); the only other difference is the one final cast to the output dtype.
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
# two split counts of the kernel: only the order of float32 sums differs, then one cast
RTOL_SPLITS = 2e-3


def _cache(B=3, Hq=6, Hkv=2, T=96, R=16, D=80, bits=4, group_k=32, group_v=16, dtype=torch.float16,
           k_len=(96, 0, 64), r_len=(5, 16, 0), seed=0):
    """Keyword arguments of ``kv_decode_attention`` for a random ragged batch (R = 0: no residual tensors)."""
    gen = torch.Generator().manual_seed(seed)
    k, v = torch.randn(B, Hkv, T, D, generator=gen), torch.randn(B, Hkv, T, D, generator=gen)
    k[:, :, :, 3] *= 8  # an outlier channel, as in real keys (what per-channel K scales are for)
    kc, ks, kmn, vc, vs, vmn = quantize_kv_ref(k, v, bits=bits, group_k=group_k, group_v=group_v)
    res = [torch.randn(B, Hkv, R, D, generator=gen).to(dtype) for _ in range(2)] if R else [None, None]
    args = dict(q=torch.randn(B, Hq, D, generator=gen).to(dtype), k_codes=kc, k_scale=ks, k_mn=kmn, v_codes=vc,
                v_scale=vs, v_mn=vmn, k_res=res[0], v_res=res[1],
                k_len=torch.tensor(k_len, dtype=torch.int32), r_len=torch.tensor(r_len, dtype=torch.int32))
    args = {n: (t.to(DEVICE) if t is not None else None) for n, t in args.items()}
    return args, dict(bits=bits, group_k=group_k, group_v=group_v)


def _check(args, meta, rtol, **launch):
    got = kv_decode_attention(**args, **meta, **launch)
    want = kv_decode_ref(**args, **meta)
    assert got.dtype == args["q"].dtype and got.shape == args["q"].shape
    assert torch.isfinite(got.float()).all()
    err = rel_err(got, want)
    assert err < rtol, f"relative error {err:.2e} ≥ {rtol:.0e}"
    return got


# ------------------------------------------------------------ kernel vs reference

@pytest.mark.parametrize("D", [64, 80], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)], ids=["mha", "gqa3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_matches_reference(bits, dtype, heads, D):
    """Ragged batch of 3: full quantized + some residual; residual only (k_len = 0); quantized only (r_len = 0)."""
    Hq, Hkv = heads
    args, meta = _cache(Hq=Hq, Hkv=Hkv, D=D, bits=bits, dtype=dtype)
    _check(args, meta, RTOL[dtype])


@pytest.mark.parametrize("group_v", [16, 32, 128], ids=lambda g: f"gv{g}")
@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_value_scales_broadcast_per_token(bits, group_v):
    """D = 128 (a power of two): each token's value scales are loaded as one row and broadcast in registers —
    groups of 16 or 32 channels and one group per token; key groups of 64 hold whole tiles (scales folded into q)."""
    args, meta = _cache(D=128, bits=bits, group_v=group_v, group_k=64, T=128, k_len=(128, 0, 64))
    _check(args, meta, RTOL[torch.float16])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("group_k", [16, 32], ids=lambda g: f"gk{g}")
@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_key_scale_rows_broadcast(bits, group_k, dtype):
    """64-token tiles holding 4 or 2 key groups: each group's scale row loaded once and broadcast over its tokens;
    k_len = 96 and 32 end inside a tile (the groups past the end are masked)."""
    args, meta = _cache(D=128, bits=bits, group_k=group_k, group_v=32, T=192, k_len=(192, 32, 96), dtype=dtype)
    _check(args, meta, RTOL[dtype], block_t=64)


@pytest.mark.parametrize("bits,D", [(8, 70), (4, 68)], ids=["8bit-D70", "4bit-D68"])
def test_rows_not_whole_words_read_as_bytes(bits, D):
    """A token's codes of 70 or 34 bytes (not a multiple of 4) are read byte by byte, not as int32 words."""
    args, meta = _cache(D=D, bits=bits, group_v=D // 2)
    _check(args, meta, RTOL[torch.float16])


def test_codes_at_an_odd_address_read_as_bytes():
    """Codes that start off a 4-byte boundary (a view into a larger buffer) cannot be read as words."""
    args, meta = _cache(D=64, bits=4)
    for name in ("k_codes", "v_codes"):
        t = args[name]
        buf = torch.zeros(t.numel() + 1, dtype=torch.uint8, device=t.device)
        buf[1:] = t.flatten()
        args[name] = buf[1:].view(t.shape)
        assert args[name].data_ptr() % 4 != 0
    _check(args, meta, RTOL[torch.float16])


@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_bfloat16(bits):
    args, meta = _cache(bits=bits, dtype=torch.bfloat16, Hq=4, Hkv=4, D=64)
    _check(args, meta, RTOL[torch.bfloat16])


@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_splits_agree(bits):
    """One split per region and several, at the same tile size (so the same dequantization path: only the order of
    the float32 sums differs); and 64-token tiles, where T = 160 is not a multiple of BLOCK_T and a tile holds two
    key groups of 32 (their scale rows broadcast, not folded into q as in 16-token tiles)."""
    args, meta = _cache(T=160, R=24, bits=bits, k_len=(160, 0, 96), r_len=(7, 24, 0), group_v=40)
    one = _check(args, meta, RTOL[torch.float16], num_splits=1, block_t=16)
    several = _check(args, meta, RTOL[torch.float16], num_splits=3, block_t=16)
    assert rel_err(one, several) < RTOL_SPLITS
    _check(args, meta, RTOL[torch.float16], num_splits=1, block_t=64)


def test_no_residual_window():
    """R = 0: no residual tensors, every token quantized (group_v = D: one V scale per token)."""
    args, meta = _cache(T=160, R=0, D=64, group_v=64, k_len=(160, 32, 96), r_len=(0, 0, 0))
    _check(args, meta, RTOL[torch.float16], block_t=64)
    zero_r = {**args, "k_res": torch.empty(3, 2, 0, 64, dtype=torch.float16, device=DEVICE)}
    zero_r["v_res"] = zero_r["k_res"]
    _check(zero_r, meta, RTOL[torch.float16], num_splits=2)


@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_zero_quantized_capacity(bits):
    """T = 0: a cache that has quantized nothing yet (every token in the residual window)."""
    args, meta = _cache(Hq=4, Hkv=2, D=64, bits=bits, k_len=(0, 0, 0), r_len=(16, 1, 9))
    B, H, D = 3, 2, 64
    u8, f16 = dict(dtype=torch.uint8, device=DEVICE), dict(dtype=torch.float16, device=DEVICE)
    args.update(k_codes=torch.empty(B, H, 0, D * bits // 8, **u8), v_codes=torch.empty(B, H, 0, D * bits // 8, **u8),
                k_scale=torch.empty(B, H, 0, D, **f16), k_mn=torch.empty(B, H, 0, D, **f16),
                v_scale=torch.empty(B, H, 0, D // 16, **f16), v_mn=torch.empty(B, H, 0, D // 16, **f16))
    _check(args, meta, RTOL[torch.float16])


def test_residual_only_and_custom_scale():
    """Every k_len = 0 (no quantized split launched) and a given sm_scale."""
    args, meta = _cache(Hq=2, Hkv=1, D=64, k_len=(0, 0, 0), r_len=(16, 1, 9))
    got = kv_decode_attention(**args, **meta, sm_scale=0.3)
    assert rel_err(got, kv_decode_ref(**args, **meta, sm_scale=0.3)) < RTOL[torch.float16]


# ---------------------------------------------------------------- the reference

def test_reference_is_softmax_attention_when_codes_are_exact():
    """Scales of 2^-k and mins on a 1/8 grid: the codes dequantize exactly, so the reference must be
    plain softmax attention over the float keys and values."""
    gen = torch.Generator().manual_seed(5)
    B, Hq, Hkv, T, R, D, gk, gv = 2, 4, 2, 64, 8, 16, 16, 8
    codes_k = torch.randint(0, 16, (B, Hkv, T, D), generator=gen)
    codes_v = torch.randint(0, 16, (B, Hkv, T, D), generator=gen)
    ks = 2.0 ** -torch.randint(2, 6, (B, Hkv, T // gk, D), generator=gen).float()
    kmn = torch.randint(-16, 16, (B, Hkv, T // gk, D), generator=gen) / 8
    vs = 2.0 ** -torch.randint(2, 6, (B, Hkv, T, D // gv), generator=gen).float()
    vmn = torch.randint(-16, 16, (B, Hkv, T, D // gv), generator=gen) / 8
    K = codes_k * ks.repeat_interleave(gk, 2) + kmn.repeat_interleave(gk, 2)  # (B, Hkv, T, D), exact
    V = codes_v * vs.repeat_interleave(gv, 3) + vmn.repeat_interleave(gv, 3)
    packed_k = (codes_k[..., 0::2] | codes_k[..., 1::2] << 4).to(torch.uint8)
    packed_v = (codes_v[..., 0::2] | codes_v[..., 1::2] << 4).to(torch.uint8)
    assert torch.equal(dequantize_k_ref(packed_k, ks, kmn, bits=4, group_k=gk), K)
    assert torch.equal(dequantize_v_ref(packed_v, vs, vmn, bits=4, group_v=gv), V)
    q, k_res, v_res = torch.randn(B, Hq, D), torch.randn(B, Hkv, R, D), torch.randn(B, Hkv, R, D)
    k_len, r_len = torch.tensor([64, 32], dtype=torch.int32), torch.tensor([3, 8], dtype=torch.int32)
    got = kv_decode_ref(q, packed_k, ks, kmn, packed_v, vs, vmn, k_res, v_res, k_len, r_len,
                        bits=4, group_k=gk, group_v=gv)
    for b in range(B):
        keys = torch.cat([K[b, :, :k_len[b]], k_res[b, :, :r_len[b]]], 1).repeat_interleave(Hq // Hkv, 0)
        vals = torch.cat([V[b, :, :k_len[b]], v_res[b, :, :r_len[b]]], 1).repeat_interleave(Hq // Hkv, 0)
        p = torch.softmax(q[b, :, None, :] @ keys.transpose(1, 2) / math.sqrt(D), -1)  # (Hq, 1, N)
        assert torch.allclose(got[b], (p @ vals)[:, 0], rtol=1e-5, atol=1e-6)


def test_four_bit_packing_is_low_nibble_first():
    v = torch.arange(16.0).view(1, 1, 1, 16)  # one token, one group of 16 channels: scale 1, min 0, codes 0…15
    k = torch.zeros(1, 1, 1, 16)
    _, _, _, vc, vs, vmn = quantize_kv_ref(k, v, bits=4, group_k=1, group_v=16)
    assert vc.flatten().tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert vs.item() == 1 and vmn.item() == 0
    hand = torch.tensor([[[[0x21, 0x43]]]], dtype=torch.uint8)  # channels 1, 2, 3, 4
    ones, zeros = torch.ones(1, 1, 1, 4), torch.zeros(1, 1, 1, 4)
    assert dequantize_k_ref(hand, ones, zeros, bits=4, group_k=1).flatten().tolist() == [1, 2, 3, 4]


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 4]), scale_dtype=st.sampled_from([torch.float16, torch.float32]),
       magnitude=st.floats(1e-2, 1e3), seed=st.integers(0, 2 ** 16))
def test_quantize_round_trip_error_is_half_a_step(bits, scale_dtype, magnitude, seed):
    """|x − dequantized| ≤ scale/2, plus the rounding of min and scale to ``scale_dtype``; a constant
    group (zero range) dequantizes exactly to its value."""
    gen = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(2, 2, 8, 16, generator=gen) * magnitude for _ in range(2))
    k[0, 0, :4, 5] = 0.5  # one key group (4 tokens of channel 5) constant
    v[1, 1, 2, 8:] = -1.25  # one value group (channels 8…15 of one token) constant
    kc, ks, kmn, vc, vs, vmn = quantize_kv_ref(k, v, bits=bits, group_k=4, group_v=8, scale_dtype=scale_dtype)
    assert ks.dtype == scale_dtype and (ks > 0).all() and (vs > 0).all()
    eps = torch.finfo(scale_dtype).eps
    qmax = 2 ** bits - 1
    for x, dq, s, mn, dim, g in ((k, dequantize_k_ref(kc, ks, kmn, bits=bits, group_k=4), ks, kmn, 2, 4),
                                 (v, dequantize_v_ref(vc, vs, vmn, bits=bits, group_v=8), vs, vmn, 3, 8)):
        s, mn = s.float().repeat_interleave(g, dim), mn.float().repeat_interleave(g, dim)
        bound = s / 2 + eps * (mn.abs() + qmax * s) + 1e-6
        assert ((x - dq).abs() <= bound).all()
    assert (dequantize_k_ref(kc, ks, kmn, bits=bits, group_k=4)[0, 0, :4, 5] == 0.5).all()
    assert (dequantize_v_ref(vc, vs, vmn, bits=bits, group_v=8)[1, 1, 2, 8:] == -1.25).all()


# ---------------------------------------------------------------- bad input

def test_bad_input_is_reported():
    args, meta = _cache(B=2, Hq=4, Hkv=2, T=64, R=8, D=64, k_len=(64, 32), r_len=(8, 0))

    def raises(match, **changes):
        a = {**args, **{n: v for n, v in changes.items() if n in args}}
        m = {**meta, **{n: v for n, v in changes.items() if n not in args}}
        with pytest.raises(ValueError, match=match):
            kv_decode_attention(**a, **m)

    i32 = dict(dtype=torch.int32, device=DEVICE)
    raises(r"bits=3: allowed 8 or 4", bits=3)
    raises(r"Hq=5 must be a multiple of Hkv=2", q=torch.randn(2, 5, 64).half().to(DEVICE))
    raises(r"k_len\[1\]=16: allowed a multiple of group_k=32", k_len=torch.tensor([64, 16], **i32))
    raises(r"k_len\[0\]=96: allowed a multiple of group_k=32 in 0 … T=64", k_len=torch.tensor([96, 32], **i32))
    raises(r"r_len\[1\]=9: allowed 0 … R=8", r_len=torch.tensor([8, 9], **i32))
    raises(r"k_len\[1\] \+ r_len\[1\] = 0", k_len=torch.tensor([64, 0], **i32), r_len=torch.tensor([8, 0], **i32))
    raises(r"k_codes must be uint8, got torch.int32", k_codes=args["k_codes"].int())
    raises(r"k_codes has shape \(2, 2, 64, 32\): allowed \(2, 2, 64, 40\)", q=torch.randn(2, 4, 80).half().to(DEVICE))
    raises(r"k_len must be int32", k_len=args["k_len"].long())
    raises(r"k_res must have q's dtype", k_res=args["k_res"].float())
    raises(r"group_v=24: must be a positive divisor of D=64", group_v=24)
    raises(r"v_scale has shape", v_scale=args["v_scale"][:, :, :, :2].contiguous())
    raises(r"k_scale must be float16 or float32", k_scale=args["k_scale"].bfloat16())
    raises(r"k_res and v_res must both be given", v_res=None)
    raises(r"num_splits=0", num_splits=0)
    raises(r"block_t=24", block_t=24)
    raises(r"num_warps=3: allowed None, 1, 2, 4, 8 or 16", num_warps=3)
    raises(r"num_stages=0: allowed None or 1 … 8", num_stages=0)
    raises(r"max_len\[0\]=96: allowed a multiple of group_k=32 in 0 … T=64", max_len=(96, 8))
    raises(r"max_len\[1\]=9: allowed 0 … R=8", max_len=(64, 9))
    raises(r"max_len=\[64, 8\]: allowed None or a pair of ints", max_len=[64, 8])


@pytest.mark.parametrize("bits", [8, 4], ids=lambda b: f"{b}bit")
def test_max_len_skips_the_host_read_and_gives_the_same_output(bits):
    """A caller that knows the longest lengths (as under CUDA-graph capture) gets exactly the checked path's output."""
    args, meta = _cache(bits=bits)
    want = kv_decode_attention(**args, **meta)
    got = kv_decode_attention(**args, **meta, max_len=(96, 16))
    assert torch.equal(got, want)
