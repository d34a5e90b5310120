"""Round-to-nearest, the baseline every method is compared against (``qtutor.methods.rtn``)."""
import pytest
import torch

from qtutor.methods import rtn_quantize_fn
from qtutor.primitives import PerChannel, PerGroup, PerTensor, QuantSpec, fake_quant, sqnr_db


@pytest.mark.parametrize("spec", [
    QuantSpec(8),
    QuantSpec(4, symmetric=False, granularity=PerChannel(0)),
    QuantSpec(4, symmetric=False, granularity=PerGroup(32)),
    QuantSpec(3, granularity=PerGroup(16)),
], ids=["int8 tensor", "int4 asym channel", "int4 asym g32", "int3 sym g16"])
def test_rtn_is_fake_quant_of_its_spec(spec, rng):
    w = torch.randn(24, 64, generator=rng)
    fn = rtn_quantize_fn(spec)
    assert torch.equal(fn(w), fake_quant(w, spec))
    assert fn.__name__ == f"rtn[{spec.describe()}]"


def test_rtn_error_falls_with_bits_and_finer_groups(rng):
    w = torch.randn(64, 256, generator=rng) * torch.logspace(-1, 1, 256)  # columns of very different scale
    by_bits = [sqnr_db(w, rtn_quantize_fn(QuantSpec(b, granularity=PerChannel(0)))(w)) for b in (2, 3, 4, 8)]
    assert by_bits == sorted(by_bits), by_bits
    coarse = sqnr_db(w, rtn_quantize_fn(QuantSpec(4, granularity=PerTensor()))(w))
    fine = sqnr_db(w, rtn_quantize_fn(QuantSpec(4, granularity=PerGroup(32)))(w))
    assert fine > coarse + 3


def test_rtn_keeps_shape_dtype_and_input(rng):
    w = torch.randn(8, 32, generator=rng, dtype=torch.float64)
    before = w.clone()
    out = rtn_quantize_fn(QuantSpec(4, granularity=PerGroup(8)))(w)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert torch.equal(w, before)  # the input is never modified


def test_rtn_rejects_non_finite_weight(rng):
    w = torch.randn(4, 16, generator=rng)
    w[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN|Inf|finite"):
        rtn_quantize_fn(QuantSpec(4))(w)
