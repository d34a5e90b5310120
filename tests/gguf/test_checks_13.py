"""Notebook 13's checker: accepts the mean of x² over tokens and names each classic wrong answer."""
import pytest
import torch

from qtutor import exercises
from qtutor.checks import CheckFailed, check_imatrix_accumulation
from qtutor.course import exercise


def test_accepts_the_reference(capsys):
    check_imatrix_accumulation(exercises.imatrix_from_activations)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (lambda x: (x * x).mean(dim=1), "over the tokens"),
    (lambda x: x.abs().mean(dim=0), "mean of x²"),
    (lambda x: (x * x).sum(dim=0), "divide by the number of tokens"),
    (lambda x: (x * x).mean(dim=0).sqrt(), "square root"),
    (lambda x: x.mean(dim=0) ** 2, r"not mean\(x\)²"),
    (lambda x: (x * x).mean(dim=0) * 1.01, "differ"),
], ids=["columns", "abs", "sum", "rms", "mean-squared", "off"])
def test_rejects_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_imatrix_accumulation(wrong)


def test_open_stub_is_not_a_failure(capsys):
    @exercise("13.1", fallback=exercises.imatrix_from_activations)
    def stub(x):
        raise NotImplementedError

    check_imatrix_accumulation(stub)
    assert "still open" in capsys.readouterr().out
    assert torch.allclose(stub(torch.ones(3, 2)), torch.ones(2, dtype=torch.float64))
