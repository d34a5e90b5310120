import copy

import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.methods.smoothquant import smooth_model_, smoothing_scales
from qtutor.model import OutlierStats, observe_linear_inputs


def test_scales_formula():
    act = torch.tensor([4.0, 1.0])
    w = torch.tensor([[1.0, 0.25], [0.5, 1.0]])
    s = smoothing_scales(act, [w], alpha=0.5)
    assert torch.allclose(s, torch.tensor([2.0 / 1.0, 1.0 / 1.0]))
    assert torch.allclose(smoothing_scales(act, [w], alpha=1.0), act)


def test_smoothed_model_equals_float_model(smollm2):
    model, tok = smollm2
    ids = calibration_samples(tok, n_samples=2, seq_len=48, seed=5)
    stats = observe_linear_inputs(model, ids.split(1), lambda n, m: OutlierStats())
    act = {n: s.absmax for n, s in stats.items()}
    smoothed = copy.deepcopy(model)
    smooth_model_(smoothed, act, alpha=0.8)
    # the weights did change ...
    assert not torch.equal(smoothed.model.layers[3].self_attn.q_proj.weight, model.model.layers[3].self_attn.q_proj.weight)
    # ... the function did not
    test_ids = calibration_samples(tok, n_samples=1, seq_len=64, seed=9, heldout=True)
    with torch.no_grad():
        ref, out = model(test_ids).logits, smoothed(test_ids).logits
    assert torch.allclose(out, ref, atol=2e-4, rtol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        smoothing_scales(torch.ones(4), [torch.ones(2, 4)], alpha=1.5)
    with pytest.raises(ValueError, match="input channels"):
        smoothing_scales(torch.ones(4), [torch.ones(2, 5)])


@pytest.mark.parametrize("act, match", [
    (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "NaN or Inf: the calibration activations"),
    (torch.tensor([1.0, float("inf"), 1.0, 1.0]), "NaN or Inf"),
    (torch.tensor([1.0, -2.0, 1.0, 1.0]), "negative entries"),
    (torch.ones(2, 2), "1-D float tensor"),
    (torch.ones(4, dtype=torch.int32), "1-D float tensor"),
], ids=["nan", "inf", "negative", "2-D", "int"])
def test_bad_statistics_are_refused(act, match):
    with pytest.raises(ValueError, match=match):
        smoothing_scales(act, [torch.ones(2, 4)], name="act_absmax[q]")


def test_nan_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha=nan"):
        smoothing_scales(torch.ones(4), [torch.ones(2, 4)], alpha=float("nan"))
