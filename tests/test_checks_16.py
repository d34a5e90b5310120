"""Exercise 16.1's checker accepts the E4M3 rounding and names the answers learners really write."""
import pytest
import torch

from qtutor import exercises
from qtutor.checks import CheckFailed, check_round_to_e4m3


def test_right_answer_passes(capsys):
    check_round_to_e4m3(exercises.round_to_e4m3)
    assert "✔" in capsys.readouterr().out


def _grid(x, mbits=3, subnormals=True, saturate=True, rnd=torch.round):
    a = x.abs().clamp(min=2.0**-6) if subnormals else x.abs()
    step = torch.exp2(torch.floor(torch.log2(a)) - mbits)
    y = rnd(x / step) * step
    return y.clamp(-448, 448) if saturate else y


def half_away(x):
    return _grid(x, rnd=lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5))


@pytest.mark.parametrize("fn,match", [
    (lambda x: _grid(x, subnormals=False), "NaN"),  # log2(0) = -inf: step 0
    (lambda x: torch.where(x.abs() < 2.0**-6, x, _grid(x)), "subnormals"),
    (lambda x: _grid(x, saturate=False), "saturates"),
    (half_away, "halfway"),
    (lambda x: _grid(x, rnd=torch.trunc), "truncated"),
    (lambda x: _grid(x, mbits=2), "too coarse"),
    (lambda x: _grid(x) * 1.01, "differ"),
    (lambda x: x[:10], "shape"),
    (lambda x: None, "forget the .return"),
], ids=["nan-at-zero", "no-subnormals", "no-saturation", "half-away", "truncate", "e5m2-step", "other", "shape",
        "none"])
def test_wrong_answers_are_named(fn, match):
    with pytest.raises(CheckFailed, match=match):
        check_round_to_e4m3(fn)
