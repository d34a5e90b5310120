import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.model import OutlierStats, observe_linear_inputs
from qtutor.observers import MinMaxObserver


def test_outlier_stats_on_real_model(smollm2):
    model, tok = smollm2
    batches = calibration_samples(tok, n_samples=2, seq_len=64, seed=0).split(1)
    stats = observe_linear_inputs(model, batches, lambda n, m: OutlierStats(6.0))
    assert len(stats) == 30 * 4
    s = stats["model.layers.5.mlp.down_proj"]
    assert s.n_tokens == 128 and s.absmax.shape == (1536,)
    assert s.n_over.sum() >= 0 and s.median_abs > 0


def test_streaming_equals_one_batch():
    torch.manual_seed(0)
    x = torch.randn(64, 16) * 4
    a, b = OutlierStats(), OutlierStats()
    a.observe(x)
    for chunk in x.split(8):
        b.observe(chunk)
    assert torch.equal(a.absmax, b.absmax) and torch.equal(a.n_over, b.n_over)
    assert a.n_tokens_with_outlier == b.n_tokens_with_outlier


def test_empty_calibration_set(smollm2):
    model, _ = smollm2
    with pytest.raises(ValueError, match="calibration set is empty"):
        observe_linear_inputs(model, [], lambda n, m: MinMaxObserver())


def test_threshold_positive():
    with pytest.raises(ValueError, match="threshold"):
        OutlierStats(0.0)
