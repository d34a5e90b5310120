"""FlatQuant's learned Kronecker transform: exact in float, never worse than its Hadamard start, bad input refused."""
import pytest
import torch

from qtutor.methods.flatquant import fit_kronecker_transform, ste_fake_quant_rows, transformed_output
from qtutor.methods.hadamard import apply_hadamard, hadamard_factors


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 48, generator=g)
    x[:, 5] *= 40  # an outlier channel
    w = torch.randn(32, 48, generator=g) / 7
    return x, w


def test_any_invertible_kronecker_transform_is_exact_in_float():
    x, w = _data()
    g = torch.Generator().manual_seed(1)
    factors = [torch.randn(12, 12, generator=g) + 4 * torch.eye(12), torch.randn(4, 4, generator=g) + 3 * torch.eye(4)]
    inv_t = [torch.linalg.inv(f).T for f in factors]
    y = apply_hadamard(x.double(), [f.double() for f in factors]) @ apply_hadamard(w.double(), [f.double() for f in inv_t]).T
    assert torch.allclose(y, (x @ w.T).double(), atol=1e-3)


def test_ste_passes_gradients_and_rounds():
    x = torch.tensor([[0.3, -1.0, 0.71]], requires_grad=True)
    q = ste_fake_quant_rows(x, 4)
    assert torch.allclose(q.detach() * 7, torch.round(q.detach() * 7))  # on the grid of step 1/7
    q.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fit_improves_on_its_hadamard_start():
    x, w = _data()
    fit = fit_kronecker_transform(x, w, steps=60, lr=3e-3)
    y = x @ w.T

    def err(f):
        with torch.no_grad():
            return float(((transformed_output(x, w, f, 4, 4) - y) ** 2).sum() / (y**2).sum())
    start = err([f.float() for f in hadamard_factors(48)])
    assert abs(fit.losses[0] - start) < 1e-5 * max(1.0, start)
    assert err(fit.factors) < 0.9 * start < err(None)
    again = fit_kronecker_transform(x, w, steps=60, lr=3e-3)
    assert all(torch.equal(a, b) for a, b in zip(fit.factors, again.factors))


@pytest.mark.parametrize("kwargs, match", [
    (dict(w_bits=1), "w_bits=1"), (dict(a_bits=2.5), "a_bits=2.5"), (dict(steps=0), "steps=0"), (dict(lr=0.0), "lr=0.0"),
])
def test_bad_arguments(kwargs, match):
    x, w = _data()
    with pytest.raises(ValueError, match=match):
        fit_kronecker_transform(x, w, **kwargs)


def test_bad_tensors():
    x, w = _data()
    with pytest.raises(ValueError, match="expected"):
        fit_kronecker_transform(x, w[:, :40])
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_kronecker_transform(x, w)
    with pytest.raises(ValueError, match="n=36"):
        fit_kronecker_transform(torch.randn(8, 36), torch.randn(4, 36))
