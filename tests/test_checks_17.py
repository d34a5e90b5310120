"""Exercise 17.1's checker accepts the clipped STE and names the answers learners really write."""
import pytest
import torch

from qtutor import exercises
from qtutor.checks import CheckFailed, check_fake_quant_clipped_ste


def test_right_answer_passes(capsys):
    check_fake_quant_clipped_ste(exercises.fake_quant_clipped_ste)
    assert "✔" in capsys.readouterr().out


def _q(x, s, b):
    m = 2 ** (b - 1) - 1
    return torch.clamp(torch.round(x / s), -m, m) * s


@pytest.mark.parametrize("fn,match", [
    (lambda x, s, b: x + (_q(x, s, b) - x).detach(), "plain STE"),
    (lambda x, s, b: _q(x, s, b), "no gradient|gradient is 0"),
    (lambda x, s, b: _q(x, s, b) / s, "integer codes"),
    (lambda x, s, b: x + (torch.round(x / s) * s - x).detach(), "does not clamp"),
    (lambda x, s, b: (x * 0 + _q(x, s, b).detach()), "gradient is 0"),
    (lambda x, s, b: x[:3], "shape"),
    (lambda x, s, b: None, "forget the .return"),
], ids=["plain-ste", "no-grad", "codes", "no-clamp", "zero-grad", "shape", "none"])
def test_wrong_answers_are_named(fn, match):
    with pytest.raises(CheckFailed, match=match):
        check_fake_quant_clipped_ste(fn)
