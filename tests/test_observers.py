import pytest
import torch

from qtutor.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from qtutor.primitives import PerChannel, PerGroup, PerTensor, QuantSpec, choose_qparams

INT8 = QuantSpec(n_bits=8)


def _feed(obs, x, n=10):
    for b in x.split(len(x) // n):
        obs.observe(b)
    return obs


def test_minmax_equals_choose_qparams_over_all_batches():
    x = torch.randn(1000, 32)
    for spec, gran in ((INT8, PerTensor()), (QuantSpec(n_bits=8, symmetric=False, granularity=PerChannel(-1)), PerChannel(-1))):
        got = _feed(MinMaxObserver(gran), x).qparams(spec)
        want = choose_qparams(x, spec if isinstance(gran, PerTensor) else QuantSpec(n_bits=8, symmetric=False, granularity=PerChannel(1)))
        assert torch.allclose(got.scale, want.scale.flatten() if got.scale.ndim else want.scale)


def test_moving_average_lags_behind_a_late_spike():
    x = torch.randn(1000, 8)
    x[-1, 0] = 100.0
    mm = _feed(MinMaxObserver(), x).qparams(INT8).scale
    ema = _feed(MovingAverageMinMaxObserver(momentum=0.1), x).qparams(INT8).scale
    assert ema < mm / 5


def test_percentile_and_mse_clip_outliers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, generator=gen)
    x[::1000] = 50.0  # 0.1 % outliers
    full = _feed(MinMaxObserver(), x).qparams(INT8).scale
    p = _feed(PercentileObserver(percentile=99.0), x).qparams(INT8).scale
    assert 2.0 / 127 < p < 3.0 / 127  # 99th percentile of |N(0,1)| ≈ 2.58
    # MSE keeps 0.1 % outliers of 50 (clipping them costs more than the coarser step) ...
    assert _feed(MSEObserver(), x).qparams(INT8).scale == pytest.approx(full.item(), rel=0.05)
    # ... but clips a single one at 4 bits
    x1 = torch.randn(20000, 1, generator=gen)
    x1[0] = 50.0
    assert _feed(MSEObserver(), x1).qparams(QuantSpec(n_bits=4)).scale * 7 < 10.0


def test_entropy_clips_a_heavy_tail():
    torch.manual_seed(1)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100000, 1))
    t = _feed(EntropyObserver(), x).qparams(INT8).scale * 127
    assert 3.0 < t < 0.9 * x.abs().max()


def test_histogram_range_grows():
    obs = PercentileObserver(percentile=100.0)
    obs.observe(torch.tensor([[0.5, -1.0]]))
    obs.observe(torch.tensor([[7.9]]))
    assert obs.range >= 7.9
    assert obs.hist.sum() == 3
    assert obs.qparams(INT8).scale * 127 == pytest.approx(7.9, rel=1e-2)


def test_per_channel_percentile_shape():
    x = torch.randn(512, 6)
    x[:, 2] *= 10
    s = _feed(PercentileObserver(PerChannel(-1), percentile=99.9), x).qparams(QuantSpec(granularity=PerChannel(-1))).scale
    assert s.shape == (6,) and s[2] > 5 * s[0]


def test_bad_input():
    with pytest.raises(ValueError, match="calibration set is empty"):
        MinMaxObserver().qparams(INT8)
    for bad in (0.0, -1.0, 100.5):
        with pytest.raises(ValueError, match="percentile="):
            PercentileObserver(percentile=bad)
    obs = MinMaxObserver(PerChannel(-1))
    obs.observe(torch.randn(4, 8))
    with pytest.raises(ValueError, match="hidden sizes must match"):
        obs.observe(torch.randn(4, 9))
    with pytest.raises(ValueError, match="granularity"):
        MinMaxObserver(PerGroup(32))
    with pytest.raises(ValueError, match="symmetric"):
        _feed(MSEObserver(), torch.randn(100, 2)).qparams(QuantSpec(symmetric=False))
    with pytest.raises(ValueError, match="PerTensor"):
        EntropyObserver(PerChannel(0))
    with pytest.raises(ValueError, match="empty batch"):
        MinMaxObserver().observe(torch.empty(0, 4))
    with pytest.raises(ValueError, match="NaN"):
        MinMaxObserver().observe(torch.tensor([1.0, float("nan")]))
