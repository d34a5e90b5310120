"""Exercise 14.1's checker accepts qtutor's bisection step and rejects the wrong ones, in one line."""
import pytest

from qtutor import exercises
from qtutor.checks import CheckFailed, check_bisection_step
from qtutor.course import exercise


def test_right_answer_passes(capsys):
    check_bisection_step(exercises.bisection_step)
    assert "✔" in capsys.readouterr().out


def wrong_half(layers, evaluate, threshold):
    mid = len(layers) // 2
    return list(layers[mid:]) if evaluate(tuple(layers[:mid])) > threshold else list(layers[:mid])


def off_by_one(layers, evaluate, threshold):
    mid = (len(layers) + 1) // 2
    return list(layers[:mid]) if evaluate(tuple(layers[:mid])) > threshold else list(layers[mid:])


def both_halves(layers, evaluate, threshold):
    mid = len(layers) // 2
    a, b = evaluate(tuple(layers[:mid])), evaluate(tuple(layers[mid:]))
    return list(layers[:mid]) if a > b else list(layers[mid:])


def never_evaluates(layers, evaluate, threshold):
    return list(layers[: len(layers) // 2])


@pytest.mark.parametrize("fn,match", [(wrong_half, "wrong half"), (off_by_one, "off by one"),
                                      (both_halves, "2 evaluations"), (never_evaluates, "never called"),
                                      (lambda l, e, t: None, "forget the .return"), (lambda l, e, t: 1 / 0, "ZeroDivisionError")],
                         ids=["wrong-half", "off-by-one", "tests-both", "never-evaluates", "none", "raises"])
def test_wrong_answers_are_named(fn, match):
    with pytest.raises(CheckFailed, match=match):
        check_bisection_step(fn)


def test_stub_is_still_open(capsys):
    @exercise("14.1", fallback=exercises.bisection_step)
    def stub(layers, evaluate, threshold):
        raise NotImplementedError

    check_bisection_step(stub)
    assert "still open" in capsys.readouterr().out
