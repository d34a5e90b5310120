"""Sensitivity helpers on small tensors: Spearman's ρ against scipy, the proxies' definitions, layer names."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.diagnose.sensitivity import layer_info, proxy_damage, rank_correlation


def test_rank_correlation_known_values():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(-10, 10)), min_size=3, max_size=30))
def test_rank_correlation_equals_scipy(pairs):
    from scipy.stats import spearmanr

    x, y = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        with pytest.raises(ValueError, match="constant"):
            rank_correlation(x, y)
        return
    assert rank_correlation(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-9)


@pytest.mark.parametrize("x, y, match", [([1.0], [1.0], "length ≥ 2"), ([1, 2], [1, 2, 3], "same length"),
                                         ([1, float("nan")], [1, 2], "finite")])
def test_rank_correlation_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        rank_correlation(x, y)


def test_proxies():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 5, generator=gen)
    dw = torch.randn(8, 5, generator=gen) * 0.1
    x = torch.randn(1000, 5, generator=gen) * torch.tensor([1.0, 5.0, 0.1, 1.0, 2.0])
    x_sq = x.double().pow(2).mean(0)
    # activation-weighted error = E‖ΔW x‖² without the cross terms between input channels
    assert proxy_damage(w, w - dw, x_sq, "activation") == pytest.approx(float((x_sq * dw.double().pow(2).sum(0)).sum()))
    assert proxy_damage(w, w - dw, x_sq, "trace") == pytest.approx(float(x_sq.mean() * dw.double().pow(2).sum()))
    assert proxy_damage(w, w - dw, x_sq, "weight") == pytest.approx(float(dw.double().pow(2).sum()))
    with pytest.raises(ValueError, match="kind='hessian'"):
        proxy_damage(w, w, x_sq, "hessian")
    with pytest.raises(ValueError, match=r"x_sq_mean \(4,\)"):
        proxy_damage(w, w, x_sq[:4])


def test_layer_info():
    assert layer_info("model.layers.7.self_attn.q_proj") == (7, "q_proj")
    with pytest.raises(ValueError, match="not a decoder linear"):
        layer_info("lm_head")
