import math

import pytest
import torch

from qtutor.primitives import (
    PerChannel,
    PerGroup,
    PerTensor,
    QuantSpec,
    ZeroPoint,
    bits_per_weight,
    error_report,
    max_abs_error,
    mse,
    relative_error,
    sqnr_db,
)


def test_metric_values():
    x = torch.tensor([3.0, 4.0])
    x_hat = torch.tensor([3.0, 3.0])
    assert mse(x, x_hat) == pytest.approx(0.5)
    assert max_abs_error(x, x_hat) == 1.0
    assert relative_error(x, x_hat) == pytest.approx(1 / 5)
    assert sqnr_db(x, x_hat) == pytest.approx(10 * math.log10(25.0))
    assert sqnr_db(x, x) == math.inf
    assert set(error_report(x, x_hat)) == {"mse", "sqnr_db", "max_abs_error", "relative_error"}


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        mse(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize(
    "spec,expected",
    [
        (QuantSpec(n_bits=4, granularity=PerGroup(128)), 4 + 16 / 128),  # symmetric: scale only
        (QuantSpec(n_bits=4, symmetric=False, granularity=PerGroup(128)), 4 + (16 + 4) / 128),  # GPTQ
        (QuantSpec(n_bits=4, symmetric=False, zero_point=ZeroPoint.FLOAT, granularity=PerGroup(32)), 5.0),  # Q4_1
        (QuantSpec(n_bits=8, granularity=PerGroup(32)), 8.5),  # Q8_0
        (QuantSpec(n_bits=8, granularity=PerTensor()), 8 + 16 / (256 * 512)),
        (QuantSpec(n_bits=8, granularity=PerChannel(0)), 8 + 16 / 512),
    ],
)
def test_bits_per_weight(spec, expected):
    assert bits_per_weight((256, 512), spec) == pytest.approx(expected)
