"""W8A8Linear and w8a8_factory (the integer arithmetic itself: tests/methods/test_w8a8.py)."""
import pytest
import torch
from torch import nn

from qtutor.config import W8A8Config
from qtutor.methods.w8a8 import ActQuant, quantize_weight_int8
from qtutor.model import replaced_linears
from qtutor.nn import W8A8Linear, w8a8_factory


def test_from_tensors_equals_from_linear():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    q, s = quantize_weight_int8(lin.weight.detach())
    a, b = W8A8Linear.from_linear(lin), W8A8Linear.from_tensors({"q_weight": q, "w_scale": s, "bias": lin.bias})
    x = torch.randn(3, 32)
    assert torch.equal(a(x), b(x))


def test_rejects_float_codes():
    with pytest.raises(ValueError, match="q_weight must be 2-D int8"):
        W8A8Linear(torch.zeros(4, 8), torch.ones(4), ActQuant())


def test_factory_takes_a_config_or_a_dict(tiny_llama, tiny_ids):
    from qtutor.model import decoder_linears

    names = list(decoder_linears(tiny_llama))
    scales = {n: 0.05 for n in names}
    with torch.no_grad():
        with replaced_linears(tiny_llama, w8a8_factory(W8A8Config(scales))):
            a = tiny_llama(tiny_ids).logits
        with replaced_linears(tiny_llama, w8a8_factory(scales)):
            b = tiny_llama(tiny_ids).logits
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no calibrated activation scale for"):
        with replaced_linears(tiny_llama, w8a8_factory({names[0]: 0.05})):
            pass
