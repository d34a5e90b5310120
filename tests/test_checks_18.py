"""Exercise 18.1's checker on the real model: qtutor's answer passes within the notebook's budget, and the answers
learners really write are named — the float model handed back, a tuple, a model quantized in place of the float
one, a model under the quality floor, a stub, a crash, a function that runs too long."""
import copy
import time

import pytest

from qtutor import checks, exercises
from qtutor.capstone import Budget, held_out_reference
from qtutor.checks import CheckFailed, check_capstone_solution
from qtutor.config import RTNConfig
from qtutor.nn import convert

BUDGET = Budget(max_mb=115, max_kl=0.30)  # notebook 18's


@pytest.fixture(scope="module")
def setting(smollm2):
    model, tok = smollm2
    return model, tok, held_out_reference(model, tok)


def test_qtutor_answer_passes(setting, capsys):
    model, tok, ref = setting
    got = check_capstone_solution(exercises.capstone_quantize, model, tok, ref, BUDGET)
    assert got["mb"] <= BUDGET.max_mb and got["kl"] <= BUDGET.max_kl and got["model"] is not model
    assert "✔" in capsys.readouterr().out
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear"  # the float model is left float


def test_float_model_handed_back_is_over_budget(setting):
    model, tok, ref = setting
    with pytest.raises(CheckFailed, match="over budget.*still nn.Linear"):
        check_capstone_solution(lambda m, t, b: m, model, tok, ref, BUDGET)


def test_under_the_quality_floor(setting):
    model, tok, ref = setting
    with pytest.raises(CheckFailed, match="under the quality floor"):
        check_capstone_solution(lambda m, t, b: convert(m, RTNConfig(2, 128)), model, tok, ref, BUDGET)


def test_wrong_return_values(setting):
    model, tok, ref = setting
    with pytest.raises(CheckFailed, match="returned a tuple of 2: return the quantized model itself"):
        check_capstone_solution(lambda m, t, b: (m, 1.0), model, tok, ref, BUDGET)
    with pytest.raises(CheckFailed, match="return the quantized model"):
        check_capstone_solution(lambda m, t, b: {"model": m}, model, tok, ref, BUDGET)
    with pytest.raises(CheckFailed, match="returned None"):
        check_capstone_solution(lambda m, t, b: None, model, tok, ref, BUDGET)


def test_quantizing_the_float_model_instead_of_the_copy(setting):
    model, tok, ref = setting
    float_model = copy.deepcopy(model)
    with pytest.raises(CheckFailed, match="the float model changed"):
        check_capstone_solution(lambda m, t, b: convert(float_model, RTNConfig(4, 128)), float_model, tok, ref, BUDGET)


def test_stub_crash_and_time_limit(setting, capsys, monkeypatch):
    model, tok, ref = setting

    def my_capstone(m, t, b):
        raise NotImplementedError

    assert check_capstone_solution(my_capstone, model, tok, ref, BUDGET) is None
    assert "still open" in capsys.readouterr().out

    def crashes(m, t, b):
        return convert(m, RTNConfig(3, 128))  # 3-bit codes do not pack

    with pytest.raises(CheckFailed, match=r"crashes raised ValueError \(line 2 of crashes\)"):
        check_capstone_solution(crashes, model, tok, ref, BUDGET)

    def slow(m, t, b):
        time.sleep(3)
        return m

    monkeypatch.setattr(checks, "CAPSTONE_TIME_LIMIT_S", 0.5)
    with pytest.raises(CheckFailed, match="ran for more than 0.5 s: the capstone allows"):
        check_capstone_solution(slow, model, tok, ref, BUDGET)
