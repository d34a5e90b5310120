"""NF4Linear: from a linear, from stored tensors, the PyTorch and Triton paths."""
import pytest
import torch
from torch import nn

from qtutor.methods.nf4 import NF4Config, QuantType4, dequantize_4bit, quantize_4bit
from qtutor.nn import NF4Linear


@pytest.mark.parametrize("config", [NF4Config(), NF4Config(double_quant=False), NF4Config(QuantType4.FP4)],
                         ids=["nf4-dq", "nf4", "fp4-dq"])
def test_from_linear_equals_dequantized(config):
    torch.manual_seed(0)
    lin = nn.Linear(128, 16, bias=True)
    layer = NF4Linear.from_linear(lin, config)
    x = torch.randn(2, 3, 128)
    w = dequantize_4bit(quantize_4bit(lin.weight.detach(), config))
    torch.testing.assert_close(layer(x), x @ w.T + lin.bias, rtol=1e-5, atol=1e-5)


def test_from_tensors_rebuilds_the_same_layer():
    w = torch.randn(16, 128)
    state = quantize_4bit(w)
    layer = NF4Linear.from_tensors(state.packed, state.absmax, (16, 128), w.dtype, state.config, state.offset,
                                   state.absmax2)
    assert torch.equal(dequantize_4bit(layer.state()), dequantize_4bit(state))


def test_from_tensors_rejects_wrong_packed_shape():
    state = quantize_4bit(torch.randn(16, 128))
    with pytest.raises(ValueError, match=r"packed must be uint8 \(1024, 1\)"):
        NF4Linear.from_tensors(state.packed[:-1], state.absmax, (16, 128), torch.float32, state.config,
                               state.offset, state.absmax2)


def test_kernel_path_within_fp16_rounding():
    torch.manual_seed(0)
    lin = nn.Linear(128, 32, bias=False).half()
    x = torch.randn(3, 128).half()
    torch_path = NF4Linear.from_linear(lin)(x)  # CPU input: PyTorch
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, else Triton's interpreter
    kernel_path = NF4Linear.from_linear(lin, use_kernel=True).to(device)(x.to(device)).cpu()
    assert float((torch_path.float() - kernel_path.float()).abs().max()) <= 2e-3 * float(torch_path.float().abs().max())
