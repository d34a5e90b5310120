"""Int8LinearLt: constructors, config, validation, and the PyTorch path's mode (bitsandbytes parity is pinned in
tests/methods/test_llm_int8.py on the real model)."""
import pytest
import torch
from torch import nn

from qtutor.config import LLMInt8Config
from qtutor.methods.llm_int8 import llm_int8_matmul, vectorwise_quant
from qtutor.nn import Int8LinearLt


def _lin():
    torch.manual_seed(0)
    return nn.Linear(64, 16, bias=True)


def test_from_linear_and_from_tensors_agree():
    lin = _lin()
    a = Int8LinearLt.from_linear(lin, LLMInt8Config(3.0))
    b = Int8LinearLt.from_tensors({"CB": a.CB, "SCB": a.SCB, "bias": lin.bias.detach()}, threshold=3.0)
    x = torch.randn(2, 5, 64)
    x[..., 7] = 10.0  # an outlier column
    assert torch.equal(a(x), b(x))
    assert a(x).dtype == torch.float32 and a(x).shape == (2, 5, 16)


def test_forward_is_the_decomposition_plus_bias():
    lin = _lin()
    layer = Int8LinearLt.from_linear(lin, threshold=6.0)
    x = torch.randn(4, 64).half()
    want = llm_int8_matmul(x, layer.CB, layer.SCB, 6.0, use_triton=False) + lin.bias.half()
    assert torch.equal(layer(x), want)
    assert layer._mode(x) is False  # CPU input: PyTorch


@pytest.mark.parametrize("tensors, match", [
    (lambda CB, SCB: {"CB": CB.float(), "SCB": SCB}, r"CB must be 2-D int8"),
    (lambda CB, SCB: {"CB": CB, "SCB": SCB[:-1]}, r"SCB must be float \(16,\)"),
    (lambda CB, SCB: {"CB": CB, "SCB": SCB, "bias": torch.zeros(3)}, r"bias must have shape \(16,\)"),
], ids=["CB-float", "SCB-short", "bias-shape"])
def test_from_tensors_rejects(tensors, match):
    CB, SCB, _ = vectorwise_quant(torch.randn(16, 64).half())
    with pytest.raises(ValueError, match=match):
        Int8LinearLt.from_tensors(tensors(CB, SCB))
