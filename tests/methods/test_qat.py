"""STE and LSQ: forward equals the quantizer, gradients follow the clipped STE and LSQ's formula, bad input refused."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from qtutor.methods.qat import LSQFakeQuant, fake_quant_ste, ste_round
from qtutor.primitives import PerChannel, QuantSpec, fake_quant


def test_ste_round_forward_and_backward():
    x = torch.tensor([0.4, 1.5, -2.6], requires_grad=True)
    y = ste_round(x)
    assert y.tolist() == [0.0, 2.0, -3.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_forward_equals_symmetric_per_row_fake_quant():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    s = w.abs().amax(1, keepdim=True) / 7
    got = fake_quant_ste(w, s, 4)
    want = fake_quant(w, QuantSpec(4, granularity=PerChannel(0)))
    assert torch.allclose(got, want, atol=1e-6)


def test_clipped_ste_gradient_for_x():
    x = torch.tensor([[-10.0, -0.3, 0.0, 0.26, 6.9, 7.6, 30.0]], requires_grad=True)
    fake_quant_ste(x, torch.tensor([[1.0]]), 4).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]  # |x/s| > 7 is clipped


def test_lsq_scale_gradient_formula():
    x = torch.tensor([[-10.0, -0.3, 0.26, 2.5, 7.6]])
    s = torch.tensor([[1.0]], requires_grad=True)
    fake_quant_ste(x, s, 4, grad_scale=0.5).sum().backward()
    v = x / 1.0
    want = sum([-7.0, round(-0.3) + 0.3, round(0.26) - 0.26, 2.0 - 2.5, 7.0])  # q_min, q − v, q − v, q − v, q_max
    assert math.isclose(float(s.grad), 0.5 * want, rel_tol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), bits=st.integers(2, 8))
def test_per_row_scale_gradients_sum_over_each_row(seed, bits):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 12, generator=g)
    s = (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1) * 0.8).requires_grad_(True)
    fake_quant_ste(w, s, bits).pow(2).sum().backward()
    assert s.grad.shape == (5, 1) and torch.isfinite(s.grad).all()
    for r in range(5):  # each row's scale gradient only sees its row
        sr = s.detach()[r:r + 1].clone().requires_grad_(True)
        fake_quant_ste(w[r:r + 1], sr, bits).pow(2).sum().backward()
        assert torch.allclose(sr.grad, s.grad[r:r + 1], atol=1e-5)


def test_lsq_module_learns_a_better_scale():
    torch.manual_seed(0)
    w = torch.randn(32, 256)
    w[:, 0] = 12.0  # an outlier column sets absmax: the absmax scale is far too coarse for the rest
    q = LSQFakeQuant(w, n_bits=4)
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    start = float((q(w) - w).pow(2).mean().detach())
    for _ in range(100):
        opt.zero_grad()
        (q(w) - w).pow(2).mean().backward()
        opt.step()
    assert float((q(w) - w).pow(2).mean().detach()) < 0.7 * start
    assert q.scale.shape == (32, 1)


@pytest.mark.parametrize("call, match", [
    (lambda: fake_quant_ste(torch.ones(3), torch.tensor(0.0), 4), "scale must be positive"),
    (lambda: fake_quant_ste(torch.ones(3), torch.tensor(float("nan")), 4), "scale must be positive"),
    (lambda: fake_quant_ste(torch.ones(3), torch.tensor(1.0), 1), "n_bits=1"),
    (lambda: LSQFakeQuant(torch.ones(3), 4), "2-D"),
    (lambda: LSQFakeQuant(torch.ones(3, 3), 4, init="mse"), "init='mse'"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_zo_minimizes_a_quadratic_with_forward_passes_only():
    from qtutor.methods.qat import zo_minimize
    target = torch.tensor([1.0, -2.0, 0.5])
    p = torch.zeros(3)
    hist = zo_minimize(lambda: ((p - target) ** 2).sum(), [p], steps=300, lr=0.05, eps=1e-3)
    assert hist[-1] < 0.01 * hist[0]
    q = torch.zeros(3)
    zo_minimize(lambda: ((q - target) ** 2).sum(), [q], steps=300, lr=0.05, eps=1e-3)
    assert torch.equal(p, q)  # seeded: the same run twice is the same


def test_zo_learns_quantization_scales():
    from qtutor.methods.qat import zo_minimize
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    w[:, 0] = 10.0
    log_s = (w.abs().amax(1, keepdim=True) / 7).log()
    start = float((fake_quant_ste(w, log_s.exp(), 4) - w).pow(2).mean())
    zo_minimize(lambda: (fake_quant_ste(w, log_s.exp(), 4) - w).pow(2).mean(), [log_s], steps=200, lr=0.5, eps=1e-2)
    assert float((fake_quant_ste(w, log_s.exp(), 4) - w).pow(2).mean()) < 0.85 * start  # the optimum is ~0.80×


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps=0"), (dict(lr=float("nan")), "lr=nan"), (dict(eps=0.0), "eps=0.0"),
])
def test_zo_bad_arguments(kwargs, match):
    from qtutor.methods.qat import zo_minimize
    args = dict(steps=1, lr=0.1, eps=1e-3) | kwargs
    with pytest.raises(ValueError, match=match):
        zo_minimize(lambda: torch.tensor(0.0), [torch.zeros(2)], **args)
    with pytest.raises(ValueError, match="non-empty"):
        zo_minimize(lambda: torch.tensor(0.0), [], steps=1, lr=0.1)
