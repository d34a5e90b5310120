"""MX (OCP v1.0) and NVFP4: worked examples, spec properties, and bit-identity with torchao's references."""
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.methods.mx import (
    MX_FORMATS, bits_per_weight, mx_dequantize, mx_fake_quant, mx_quantize,
    nvfp4_dequantize, nvfp4_fake_quant, nvfp4_quantize,
)
from qtutor.primitives.minifloat import E2M1, E4M3, decode, encode, representable_values

FP_NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4"]

BITS = {"mxfp8_e4m3": 8.25, "mxfp8_e5m2": 8.25, "mxfp6_e3m2": 6.25, "mxfp6_e2m3": 6.25, "mxfp4": 4.25,
        "mxint8": 8.25}


@pytest.mark.parametrize("name", sorted(BITS))
def test_bits_per_weight_mx(name):
    assert bits_per_weight(name) == BITS[name]


def test_bits_per_weight_nvfp4_counts_the_tensor_scale():
    assert bits_per_weight("nvfp4") == 4.5
    assert bits_per_weight("nvfp4", numel=4096 * 4096) == 4.5 + 32 / (4096 * 4096)
    assert bits_per_weight("nvfp4", numel=16) == 6.5


def test_mxfp4_block_by_hand():
    """amax 6 = 1.5 · 2²: shared_exp = 2 − emax(E2M1) = 0, X = 1, code 127; elements round to E2M1, ties even."""
    x = torch.zeros(32)
    x[:6] = torch.tensor([6.0, -2.5, 0.25, 5.0, 1.75, -0.1])
    scales, codes = mx_quantize(x, "mxfp4")
    assert scales.tolist() == [127]
    assert decode(codes, E2M1)[:6].tolist() == [6.0, -2.0, 0.0, 4.0, 2.0, -0.0]
    # amax 7.9 lies in [4, 8): the same X; 7.9 saturates to 6
    assert mx_fake_quant(torch.full((32,), 7.9), "mxfp4").unique().tolist() == [6.0]
    # ×2^-40 only moves the scale
    s2, c2 = mx_quantize(x * 2.0**-40, "mxfp4")
    assert s2.tolist() == [127 - 40] and torch.equal(c2, codes)


def test_mxint8_by_hand():
    """int8 · 2⁻⁶ with emax 0: amax 1.5 → X = 1; −2 (code −128) is never used; ties to even."""
    x = torch.zeros(32)
    x[:5] = torch.tensor([1.5, -1.999, 1.0 / 128, 3.0 / 128, 1.9999])
    scales, codes = mx_quantize(x, "mxint8")
    q = codes.view(torch.int8)
    assert scales.tolist() == [127] and q[:5].tolist() == [96, -127, 0, 2, 127]
    assert torch.equal(mx_dequantize(scales, codes, "mxint8")[:5], q[:5].float() / 64)


@pytest.mark.parametrize("name", sorted(MX_FORMATS))
def test_all_zero_block_and_clamped_scale(name):
    x = torch.zeros(2, 64)
    x[1, 32:] = 2.0**-140  # floor(log2) − emax < −127: clamped to the smallest scale 2^-127
    scales, codes = mx_quantize(x, name)
    assert scales.tolist() == [[0, 0], [0, 0]]
    assert int(codes[0].max()) == 0 and torch.equal(mx_fake_quant(x, name)[0], x[0])


@pytest.mark.parametrize("name", sorted(MX_FORMATS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_property_scale_and_round_trip(name, data):
    """amax / X lies in [2^emax, 2^(emax+1)); fake quantization is idempotent; dequantize ∘ quantize = fake_quant."""
    fmt = MX_FORMATS[name]
    vals = data.draw(st.lists(st.floats(-(2.0**100), 2.0**100, width=32), min_size=64, max_size=64))
    x = torch.tensor(vals, dtype=torch.float32).reshape(2, 32)
    scales, codes = mx_quantize(x, name)
    amax = x.abs().amax(dim=-1)
    ratio = amax / torch.ldexp(torch.ones(2), scales[:, 0].to(torch.int32) - 127)  # (2,)
    big = amax > 2.0**-100  # away from the clamp at 2^-127
    assert bool((ratio[big] >= 2.0**fmt.emax).all() and (ratio[big] < 2.0 ** (fmt.emax + 1)).all())
    y = mx_fake_quant(x, name)
    assert torch.equal(y, mx_dequantize(scales, codes, name))
    assert torch.equal(mx_fake_quant(y, name), y)


def test_nvfp4_by_hand():
    """amax 2688 = 448 · 6 makes g = 1; a block with amax 6 gets s_b = 1, so elements are E2M1 of x itself."""
    x = torch.zeros(1, 32)
    x[0, 0] = 2688.0
    x[0, 16:20] = torch.tensor([6.0, 2.5, 0.25, -5.0])
    scales, codes, g = nvfp4_quantize(x)
    assert float(g) == 1.0 and decode(scales, E4M3).tolist() == [[448.0, 1.0]]
    assert decode(codes, E2M1)[0, 16:20].tolist() == [6.0, 2.0, 0.0, -4.0]
    assert torch.equal(nvfp4_fake_quant(x), nvfp4_dequantize(scales, codes, g))


def test_nvfp4_tiny_tensor_gives_no_nan():
    x = torch.zeros(1, 32)
    x[0, 31] = 1.1754943508222875e-38  # max/2688 is subnormal: 1/g would overflow and 0 · inf give NaN
    scales, codes, g = nvfp4_quantize(x)
    assert float(g) == 2.0**-121
    out = nvfp4_fake_quant(x)
    assert torch.isfinite(out).all() and float(out[0, 0]) == 0.0 and float(out[0, 31]) > 0
    with pytest.raises(ValueError, match="per_tensor_scale"):
        nvfp4_quantize(x, per_tensor_scale=torch.tensor(1e-40))


def test_nvfp4_zero_tensor_and_tiny_blocks():
    scales, codes, g = nvfp4_quantize(torch.zeros(2, 16))
    assert float(g) == 1.0 and int(codes.max()) == 0 and decode(scales, E4M3).unique().tolist() == [2.0**-6]
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 16] = 2688.0, 1e-3  # block scale 1e-3/6 < 2^-6: clamped up to E4M3's smallest normal
    assert decode(nvfp4_quantize(x)[0], E4M3).tolist() == [[448.0, 2.0**-6]]


@settings(max_examples=25, deadline=None)
@given(vals=st.lists(st.floats(-1e6, 1e6, width=32), min_size=32, max_size=32))
def test_property_nvfp4_elements_on_the_grid(vals):
    x = torch.tensor(vals, dtype=torch.float32).reshape(1, 32)
    scales, codes, g = nvfp4_quantize(x)
    assert bool(torch.isin(decode(codes, E2M1), representable_values(E2M1)).all())
    assert torch.equal(nvfp4_fake_quant(x), nvfp4_dequantize(scales, codes, g))


def test_bad_input():
    with pytest.raises(ValueError, match=r"fmt_name='mxfp5': unknown MX format; allowed: \['mxfp4'"):
        mx_quantize(torch.zeros(32), "mxfp5")
    with pytest.raises(ValueError, match=r"fmt_name='fp8'.*'nvfp4'"):
        bits_per_weight("fp8")
    with pytest.raises(ValueError, match="numel=0"):
        bits_per_weight("nvfp4", numel=0)
    with pytest.raises(ValueError, match="multiple of 32 .*pad x with zeros"):
        mx_quantize(torch.zeros(4, 48), "mxfp4")
    with pytest.raises(ValueError, match="multiple of 16"):
        nvfp4_quantize(torch.zeros(4, 24))
    with pytest.raises(ValueError, match="x contains 1 NaN or Inf"):
        mx_quantize(torch.tensor([float("inf")] + [0.0] * 31), "mxfp8_e4m3")
    with pytest.raises(ValueError, match="x contains 1 NaN or Inf"):
        nvfp4_quantize(torch.tensor([float("nan")] + [0.0] * 15))
    with pytest.raises(ValueError, match="x has dtype torch.int32"):
        mx_quantize(torch.zeros(32, dtype=torch.int32), "mxint8")
    with pytest.raises(ValueError, match="codes must be a uint8 tensor"):
        mx_dequantize(torch.zeros(1, dtype=torch.uint8), torch.zeros(32, dtype=torch.int8), "mxint8")
    with pytest.raises(ValueError, match="do not match"):
        mx_dequantize(torch.zeros(2, dtype=torch.uint8), torch.zeros(32, dtype=torch.uint8), "mxfp4")
    with pytest.raises(ValueError, match="per_tensor_scale"):
        nvfp4_quantize(torch.ones(16), per_tensor_scale=torch.tensor(-1.0))


# ---------------------------------------------------------------- torchao 0.18.0, bit for bit


# `make setup` installs torchao==0.18.0 (no dependencies) into .venv/ref/torchao, outside site-packages: importing
# torchao prints C-extension warnings, and transformers imports it whenever it is installed, so in the venv proper
# it would add stderr lines to every notebook. Only these tests put it on sys.path. Under CI its absence fails.
_TORCHAO_REF = Path(sys.prefix) / "ref" / "torchao"


def _torchao(module: str):
    if _TORCHAO_REF.is_dir() and str(_TORCHAO_REF) not in sys.path:
        sys.path.append(str(_TORCHAO_REF))
    if os.environ.get("CI") and not _TORCHAO_REF.is_dir():
        pytest.fail(f"torchao reference missing at {_TORCHAO_REF}: run make setup")
    return pytest.importorskip(module)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    spread = 10.0 ** torch.randint(-30, 30, (16, 1), generator=g).float()  # one magnitude per row
    ties = torch.tensor([6.0, 2.5, 0.25, 5.0, 1.75, 3.5, 0.75, -2.5] * 8).reshape(2, 32)  # E2M1/E4M3 midpoints
    mixed = torch.randn(4, 128, generator=g)
    mixed[0, :32] = 0  # an all-zero block
    mixed[1, 32:64] *= 1e30
    mixed[2, 64:96] *= 1e-30  # tiny, but above the scale clamp (see the test below for that)
    return {
        "randn": torch.randn(8, 256, generator=g),
        "spread": torch.randn(16, 128, generator=g) * spread,
        "ties": ties * torch.tensor([[2.0**-3], [2.0**5]]),
        "huge": torch.randn(2, 64, generator=g) * 1e37,
        "zeros": torch.zeros(2, 64),
        "mixed": mixed,
    }


INPUTS = _inputs()


def _torchao_mx(x: torch.Tensor, name: str):
    mx = _torchao("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.kernels import unpack_uint4

    dtype = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2, "mxfp6_e3m2": DTYPE_FP6_E3M2,
             "mxfp6_e2m3": DTYPE_FP6_E2M3, "mxfp4": torch.float4_e2m1fn_x2}[name]
    scale, data = mx.to_mx(x, dtype, 32, mx.ScaleCalculationMode.FLOOR)
    deq = mx.to_dtype(data, scale, dtype, 32, torch.float32)
    codes = unpack_uint4(data.view(torch.uint8)) if name == "mxfp4" else data.view(torch.uint8)
    return scale.view(torch.uint8), codes, deq


@pytest.mark.parametrize("inp", sorted(INPUTS))
@pytest.mark.parametrize("name", FP_NAMES)
def test_mx_bit_identical_to_torchao(name, inp):
    x = INPUTS[inp]
    ts, tc, tdeq = _torchao_mx(x, name)
    scales, codes = mx_quantize(x, name)
    assert torch.equal(scales, ts) and torch.equal(codes, tc)
    assert torch.equal(mx_dequantize(scales, codes, name), tdeq)


@pytest.mark.parametrize("name", FP_NAMES)
def test_torchao_divides_by_2_pow_minus_126_on_the_smallest_scale(name):
    """Scale code 0 means X = 2^-127; torchao stores code 0 but divides by 2^-126 (its float32 scale is clamped
    to the smallest normal). Here V / 2^-127, as the spec says: the one place the two differ."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 32, generator=g) * 1e-38
    x[1] = 2.0**-126 * torch.rand(32, generator=g)  # float32 subnormals
    ts, tc, _ = _torchao_mx(x, name)
    scales, codes = mx_quantize(x, name)
    elem = MX_FORMATS[name].element
    assert scales.tolist() == ts.tolist() == [[0], [0]]
    assert torch.equal(codes, encode(x * 2.0**127, elem))
    assert torch.equal(tc, encode(x * 2.0**126, elem)) and not torch.equal(tc, codes)


@pytest.mark.parametrize("inp", sorted(set(INPUTS) - {"zeros"}))
def test_nvfp4_bit_identical_to_torchao(inp):
    """torchao's two-level path with per_tensor_scale = amax / (448 · 6); an all-zero tensor there gives 0/0 = NaN."""
    nv = _torchao("torchao.prototype.mx_formats.nvfp4_tensor")
    from torchao.prototype.mx_formats.kernels import unpack_uint4

    x = INPUTS[inp]
    g = nv.per_tensor_amax_to_scale(x.abs().amax())
    ts, tdata = nv.nvfp4_quantize(x, 16, g)
    scales, codes, ours_g = nvfp4_quantize(x)
    assert torch.equal(ours_g, g)
    assert torch.equal(scales, ts.view(torch.uint8)) and torch.equal(codes, unpack_uint4(tdata))
    tdeq = nv.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=g).dequantize(torch.float32)
    assert torch.equal(nvfp4_dequantize(scales, codes, ours_g), tdeq)
