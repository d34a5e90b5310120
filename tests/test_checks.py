"""Each checker accepts the right answer and rejects typical wrong ones with a useful message."""
import pytest
import torch

from qtutor.checks import CheckFailed, check_group_fake_quant, check_memory_gb, check_quantize_asym
from qtutor.primitives import PerChannel, PerGroup, QuantSpec, fake_quant


def test_memory_right_and_wrong():
    check_memory_gb(lambda n, b: n * b / 8 / 1e9)
    with pytest.raises(CheckFailed, match="GiB"):
        check_memory_gb(lambda n, b: n * b / 8 / 2**30)
    with pytest.raises(CheckFailed, match="bits, not bytes"):
        check_memory_gb(lambda n, b: n * b / 1e9)


def _asym(x, n_bits, include_zero=True, steps=None, clamp=True):
    qmax = 2**n_bits - 1
    lo, hi = x.min().item(), x.max().item()
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (steps or qmax)
    zp = round(-lo / scale)
    q = torch.round(x / scale) + zp
    return (q.clamp(0, qmax) if clamp else q), scale, zp


def test_asym_right_and_wrong():
    check_quantize_asym(_asym)
    with pytest.raises(CheckFailed, match="include 0.0"):
        check_quantize_asym(lambda x, b: _asym(x, b, include_zero=False))
    with pytest.raises(CheckFailed, match="number of steps"):
        check_quantize_asym(lambda x, b: _asym(x, b, steps=2**b))
    with pytest.raises(CheckFailed, match="zero_point"):
        check_quantize_asym(lambda x, b: (_asym(x, b)[0], _asym(x, b)[1], _asym(x, b)[2] + 1))
    with pytest.raises(CheckFailed, match="fractions"):
        check_quantize_asym(lambda x, b: (_asym(x, b)[0] + 0.25, *_asym(x, b)[1:]))


def test_group_right_and_wrong():
    check_group_fake_quant(lambda w, b, g: fake_quant(w, QuantSpec(n_bits=b, granularity=PerGroup(g))))
    with pytest.raises(CheckFailed, match="per-channel"):
        check_group_fake_quant(lambda w, b, g: fake_quant(w, QuantSpec(n_bits=b, granularity=PerChannel(0))))
    with pytest.raises(CheckFailed, match="shape"):
        check_group_fake_quant(lambda w, b, g: w.flatten())
    with pytest.raises(CheckFailed, match="max diff"):
        check_group_fake_quant(lambda w, b, g: w)
