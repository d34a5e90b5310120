"""FP8 with scales: equal to torch's float8 casts under the same scales, every granularity; bad input."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from qtutor.methods.fp8_scaling import fp8_fake_quant, fp8_scales

TORCH = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _torch_ref(x, fmt, granularity, block=128):
    s = fp8_scales(x, fmt, granularity, block)
    if granularity == "group":
        g = x.reshape(*x.shape[:-1], -1, block)
    elif granularity == "block":
        g = x.reshape(x.shape[0] // block, block, -1, block)
    else:
        g = x
    return ((g / s).to(TORCH[fmt]).float() * s).reshape(x.shape)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("granularity", ["tensor", "token", "channel", "group", "block"])
def test_matches_torch_cast(fmt, granularity):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 384, generator=g) * torch.logspace(-3, 2, 384)  # channels of very different size
    x[3, 5] = 0.0
    got = fp8_fake_quant(x, fmt, granularity)
    assert torch.equal(got, _torch_ref(x, fmt, granularity))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), scale=st.floats(1e-30, 1e30), fmt=st.sampled_from(["e4m3", "e5m2"]))
def test_matches_torch_cast_property(seed, scale, fmt):
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(seed)) * scale
    for gran in ("tensor", "token", "group"):
        got = fp8_fake_quant(x, fmt, gran)
        assert torch.isfinite(got).all()
        assert torch.equal(got, _torch_ref(x, fmt, gran))


def test_group_max_is_exact_and_zero_groups_stay_zero():
    x = torch.randn(2, 256)
    x[1] = 0
    q = fp8_fake_quant(x, "e4m3", "token")
    assert torch.equal(q[1], torch.zeros(256))
    i = x[0].abs().argmax()
    assert q[0, i] == x[0, i]  # the max lands on 448·s exactly (448 is representable)


def test_ragged_edges_equal_the_padded_tiles():
    x = torch.randn(200, 576)
    got = fp8_fake_quant(x, "e4m3", "block")
    padded = torch.nn.functional.pad(x, (0, 64, 0, 56))
    assert torch.equal(got, fp8_fake_quant(padded, "e4m3", "block")[:200, :576])
    assert fp8_scales(x, "e4m3", "block").shape == (2, 1, 5, 1)
    g = fp8_fake_quant(x, "e4m3", "group")
    assert torch.equal(g[:, 512:], fp8_fake_quant(x[:, 512:], "e4m3", "token"))  # the last group is 64 wide


def test_block_scales_shape():
    s = fp8_scales(torch.randn(256, 512), "e4m3", "block")
    assert s.shape == (2, 1, 4, 1)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(fmt="e4m4"), ValueError, "fmt="),
    (dict(granularity="row"), ValueError, "granularity="),
    (dict(granularity="group", block=0), ValueError, "block=0"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        fp8_fake_quant(torch.randn(256, 256), **kwargs)


def test_bad_tensors():
    with pytest.raises(ValueError, match="NaN or Inf"):
        fp8_fake_quant(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(TypeError, match="floating-point"):
        fp8_fake_quant(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        fp8_fake_quant(torch.randn(2, 128, 128), granularity="block")
