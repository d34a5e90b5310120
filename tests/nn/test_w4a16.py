"""W4A16Linear: packs the shared grid in the GPTQ-v2 layout; builds from stored tensors; checks them."""
import pytest
import torch
from torch import nn

from qtutor.config import RTNConfig
from qtutor.formats.layouts import pack_gptq
from qtutor.nn import W4A16Linear
from qtutor.nn.w4a16 import w4a16_kernel_linear
from qtutor.primitives import rtn_grid_quantize


def _linear(out=32, inp=96, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(inp, out, bias=bias)


@pytest.mark.parametrize("n_bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, None], ids=["g32", "g64-short-last", "per-row"])
def test_from_linear_equals_dequantized_grid(n_bits, group_size):
    lin = _linear()
    layer = W4A16Linear.from_linear(lin, RTNConfig(n_bits, group_size))
    qw = rtn_grid_quantize(lin.weight.detach(), n_bits, group_size)
    qw.scale = qw.scale.half().float()  # the layer keeps fp16 scales
    x = torch.randn(3, 5, 96)
    torch.testing.assert_close(layer(x), x @ qw.dequantize().T + lin.bias, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.quantized_weight().q, qw.q)


def test_from_tensors_uses_the_given_tensors():
    qw = rtn_grid_quantize(torch.randn(16, 64), 4, 32)
    packed = pack_gptq(qw, version=2)
    layer = W4A16Linear.from_tensors(packed, 4, 32)
    assert layer.qweight.data_ptr() == packed["qweight"].data_ptr()  # not repacked
    assert (layer.in_features, layer.out_features) == (64, 16)


@pytest.mark.parametrize("name, bad, match", [
    ("qweight", lambda t: t.to(torch.int64), r"qweight must be 2-D int32"),
    ("qzeros", lambda t: t[:1], r"qzeros must be torch.int32 \(2, 2\)"),
    ("scales", lambda t: t.to(torch.int32), r"scales must be"),
    ("g_idx", lambda t: t[:-1], r"g_idx must be torch.int32 \(64,\)"),
    ("g_idx", lambda t: torch.where(t == 1, 7, t).to(torch.int32), r"g_idx values must lie in \[0, 2\)"),
], ids=["qweight-int64", "qzeros-rows", "scales-int", "g_idx-short", "g_idx-out-of-range"])
def test_from_tensors_rejects(name, bad, match):
    packed = pack_gptq(rtn_grid_quantize(torch.randn(16, 64), 4, 32), version=2)
    packed[name] = bad(packed[name])
    with pytest.raises(ValueError, match=match):
        W4A16Linear.from_tensors(packed, 4, 32)


def test_three_bits_cannot_be_packed():
    with pytest.raises(ValueError, match=r"n_bits=3: W4A16Linear packs \(2, 4, 8\)"):
        W4A16Linear.from_linear(_linear(), RTNConfig(3, 32))


@pytest.mark.parametrize("act_order", [False, True], ids=["groups", "act-order"])
def test_kernel_path_matches_pytorch_path(act_order):
    """The Triton kernel (here in the interpreter) against the dequantized PyTorch path, fp16."""
    lin = _linear(out=32, inp=128, bias=True)
    qw = rtn_grid_quantize(lin.weight.detach(), 4, 32)
    if act_order:
        qw.g_idx = qw.g_idx[torch.randperm(128, generator=torch.Generator().manual_seed(0))].contiguous()
    layer = W4A16Linear.from_quantized(qw, lin.bias.detach().half())
    assert layer.kernel_group == (0 if act_order else 32)
    x = torch.randn(4, 128).half()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, else Triton's interpreter
    got = w4a16_kernel_linear(x.to(device), layer.to(device)).cpu()
    want = layer.cpu()(x)  # a CPU input: PyTorch
    assert float((got.float() - want.float()).abs().max()) <= 2e-3 * float(want.float().abs().max())
