"""The capstone's judge on the real model: it rejects an over-budget model (with the fake-quantization hint), an
under-quality one, and accepts one that meets both."""
import copy

import pytest
import torch

from qtutor.capstone import Budget, check_capstone, held_out_reference, stored_megabytes
from qtutor.checks import CheckFailed
from qtutor.config import RTNConfig
from qtutor.nn import convert


@pytest.fixture(scope="module")
def setting(smollm2):
    model, tok = smollm2
    ref = held_out_reference(model, tok)
    q = convert(copy.deepcopy(model), RTNConfig(4, 64))
    return model, ref, q


def test_sizes(setting):
    model, _, q = setting
    f, s = stored_megabytes(model), stored_megabytes(q)
    n = sum(p.numel() for p in model.parameters())  # tied head counted once
    assert f["total"] == pytest.approx(2 * n / 1e6) and f["float_linears"] == 210
    assert s["float_linears"] == 0 and s["rest"] == f["rest"] and s["linears"] < 0.3 * f["linears"]


def test_over_budget_and_the_fake_quantization_hint(setting):
    model, ref, q = setting
    with pytest.raises(CheckFailed, match="over budget.*210 decoder linears are still nn.Linear"):
        check_capstone(model, ref, Budget(max_mb=150, max_kl=1.0))
    with pytest.raises(CheckFailed, match="over budget.*fewer bits"):
        check_capstone(q, ref, Budget(max_mb=50, max_kl=1.0))


def test_under_quality_and_a_pass(setting):
    _, ref, q = setting
    size = stored_megabytes(q)["total"]
    with pytest.raises(CheckFailed, match="under the quality floor"):
        check_capstone(q, ref, Budget(max_mb=size + 1, max_kl=0.01))
    got = check_capstone(q, ref, Budget(max_mb=size + 1, max_kl=2.0))
    assert got["mb"] == pytest.approx(size) and 0 < got["kl"] < 2.0


def test_bad_input(setting):
    _, ref, q = setting
    for bad in (dict(max_mb=0, max_kl=1), dict(max_mb=100, max_kl=float("nan")), dict(max_mb=True, max_kl=1)):
        with pytest.raises(ValueError, match="must be a positive finite number"):
            Budget(**bad)
    with pytest.raises(ValueError, match="Budget"):
        check_capstone(q, ref, (100, 1.0))
    with pytest.raises(ValueError, match="held_out_reference"):
        check_capstone(q, torch.zeros(3), Budget(100, 1.0))
