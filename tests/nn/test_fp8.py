"""FP8Linear against a hand-written e4m3 reference (CPU), its rounding bound (hypothesis), and _scaled_mm (GPU)."""
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from qtutor.config import FP8Config
from qtutor.methods.fp8 import FP8, quantize_fp8
from qtutor.nn import FP8Linear


def _reference(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """Written out: absmax → 448 per row of W and per token of x, cast to e4m3, multiply exactly, rescale."""
    def q(t):
        amax = t.abs().amax(dim=1, keepdim=True)
        scale = amax / 448.0
        codes = (t * (torch.full_like(amax, 448.0) / amax)).clamp(-448, 448).to(torch.float8_e4m3fn)
        return codes.double(), scale.double()

    w, s_w = q(lin.weight.detach().float())
    a, s_a = q(x.reshape(-1, x.shape[-1]).float())
    y = (a @ w.T) * s_a * s_w.T + lin.bias.double()
    return y.reshape(*x.shape[:-1], -1)


def test_matches_hand_written_reference():
    torch.manual_seed(0)
    lin = nn.Linear(96, 24)
    x = torch.randn(2, 7, 96) * 3
    layer = FP8Linear.from_linear(lin, FP8Config())
    torch.testing.assert_close(layer(x).double(), _reference(x, lin), rtol=1e-5, atol=1e-5)
    assert layer.q_weight.dtype == FP8 and layer.w_scale.shape == (24,)


def test_close_to_float():
    torch.manual_seed(1)
    lin = nn.Linear(256, 64)
    x = torch.randn(8, 256)
    with torch.no_grad():
        y, want = FP8Linear.from_linear(lin)(x), lin(x)
    assert float((y - want).norm() / want.norm()) < 0.05  # 3 mantissa bits: ~2-3 % relative error


def test_from_tensors_and_validation():
    q, s = quantize_fp8(torch.randn(8, 32))
    assert torch.equal(FP8Linear.from_tensors({"q_weight": q, "w_scale": s}).dequantized_weight(), q.float() * s[:, None])
    with pytest.raises(ValueError, match="q_weight must be 2-D float8_e4m3fn"):
        FP8Linear(q.float(), s)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_fp8(torch.tensor([[1.0, float("nan")]]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=2, max_size=64))
@example([0.0, 1.1754943508222875e-38])  # 448 / max overflows float32: found by this test
@example([1e-45, -1e-45, 0.0])
def test_rounding_error_bound(values):
    """Each code is the nearest e4m3 value of ``w / s``: off by at most half a step (2⁻⁴ relative, 2⁻¹⁰ subnormal)."""
    w = torch.tensor([values])
    q, s = quantize_fp8(w)
    if float(s) == 0:
        assert torch.all(q.float() == 0)
        return
    scaled = w / s
    err = (scaled - q.float()).abs()
    assert torch.all(err <= torch.maximum(scaled.abs() * 2**-4, torch.full_like(scaled, 2**-10)) * (1 + 1e-6))


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="needs a GPU with fp8 tensor cores (compute capability ≥ 8.9)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scaled_mm_matches_reference(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    x = torch.randn(5, 256)
    cpu = FP8Linear.from_linear(lin)
    gpu = FP8Linear.from_linear(lin).cuda()
    want = cpu(x.to(dtype)).float()
    got = gpu(x.to(dtype).cuda()).float().cpu()
    assert float((got - want).abs().max()) <= 1e-2 * float(want.abs().max())


def test_tiny_rows_give_no_nan():
    """448 / 1e-38 overflows float32; a row that small must still give finite codes (0 stays 0)."""
    w = torch.tensor([[0.0, 1e-37, -5e-38], [0.0, 0.0, 0.0]])
    q, s = quantize_fp8(w)
    assert torch.isfinite(q.float()).all() and q.float()[0, 0] == 0 and torch.all(q.float()[1] == 0)
    assert torch.allclose(q.float() * s[:, None], w, rtol=0.07, atol=0)
    with torch.no_grad():
        y = FP8Linear(q, s)(torch.tensor([[1e-38, 0.0, 2e-38]]))
    assert torch.isfinite(y).all()
