import pytest
import torch
from torch import nn

from qtutor.kernels.w8a8 import int8_matmul_ref, quantize_per_token_ref
from qtutor.methods.w8a8 import ActQuant, int8_matmul_asym_ref
from qtutor.nn import W8A8Linear


def test_linear_matches_fake_quant_math():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=True)
    x = torch.randn(3, 5, 64)
    q = W8A8Linear.from_linear(lin)
    q_x, s_x = quantize_per_token_ref(x.reshape(-1, 64))
    q_w, s_w = quantize_per_token_ref(lin.weight.detach())
    want = (q_x.float() * s_x[:, None]) @ (q_w.float() * s_w[:, None]).T + lin.bias
    got = q(x)
    assert got.shape == (3, 5, 32)
    assert torch.allclose(got.reshape(-1, 32), want, atol=1e-5)
    assert torch.allclose(got, lin(x), atol=0.05)


def test_static_scale_clips():
    lin = nn.Linear(16, 4, bias=False)
    x = torch.randn(2, 16) * 10
    q = W8A8Linear.from_linear(lin, ActQuant(static_scale=1.0 / 127))  # range ±1: everything clips
    y = q(x)
    x_clipped = x.clamp(-1, 1)
    assert torch.allclose(y, x_clipped @ lin.weight.T, atol=0.05)


def test_asymmetric_cross_term():
    torch.manual_seed(1)
    x = torch.rand(4, 32) * 3 + 0.5  # all positive: asymmetric codes
    scale = (x.amax(1) - x.amin(1)) / 255
    zp = torch.round(-x.amin(1) / scale)
    q_x = torch.clamp(torch.round(x / scale[:, None]) + zp[:, None], 0, 255).to(torch.uint8)
    q_w = torch.randint(-127, 128, (6, 32), dtype=torch.int8)
    s_w = torch.rand(6)
    got = int8_matmul_asym_ref(q_x, zp, scale, q_w, s_w)
    want = ((q_x.float() - zp[:, None]) * scale[:, None]) @ (q_w.float() * s_w[:, None]).T
    assert torch.allclose(got, want, atol=1e-4)
    without_cross = int8_matmul_ref(q_x.to(torch.int16).clamp(max=127).to(torch.int8), q_w, scale, s_w)
    assert not torch.allclose(without_cross, want, atol=1e-2)


def test_bad_static_scale():
    with pytest.raises(ValueError, match="static_scale"):
        ActQuant(static_scale=0.0)
