"""The W8A8 Triton kernels against their PyTorch references (interpreter on CPU, compiled on GPU)."""
import pytest
import torch

from qtutor.kernels.w8a8 import (
    fp8_matmul,
    int8_matmul,
    int8_matmul_ref,
    quantize_per_token,
    quantize_per_token_ref,
    w8a8_dynamic,
    w8a8_dynamic_ref,
)
from tolerances import RTOL as TOL, RTOL_FP8_VS_FLOAT, rel_err  # the one table (tests/kernels/tolerances.py)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 64, 64), (5, 100, 70), (33, 576, 192), (17, 130, 257)]  # include sizes off the block grid
RTOL = TOL["int8"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _ids(shape):
    return "x".join(map(str, shape))


_rel = rel_err


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_quantize_per_token_exact(shape, dtype):
    M, K, _ = shape
    x = (torch.randn(M, K) * 3).to(dtype).to(DEVICE)
    x[0, 0] = 0.0
    q, s = quantize_per_token(x)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_int8_matmul(shape, out_dtype):
    M, K, N = shape
    q_x = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=DEVICE)
    q_w = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=DEVICE)
    # realistic scales (max/127): the output stays within fp16 range
    s_x, s_w = (torch.rand(M, device=DEVICE) + 0.01) / 127, (torch.rand(N, device=DEVICE) + 0.01) / 127
    out = int8_matmul(q_x, q_w, s_x, s_w, out_dtype=out_dtype)
    assert out.dtype == out_dtype and torch.isfinite(out.float()).all()
    assert _rel(out, int8_matmul_ref(q_x, q_w, s_x, s_w)) <= RTOL[out_dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launches"])
def test_w8a8_dynamic(shape, dtype, fused):
    M, K, N = shape
    x = (torch.randn(M, K) * 2).to(dtype).to(DEVICE)
    q_w = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=DEVICE)
    s_w = torch.rand(N, device=DEVICE) + 0.01
    out = w8a8_dynamic(x, q_w, s_w, fused=fused)
    assert out.dtype == dtype
    assert _rel(out, w8a8_dynamic_ref(x, q_w, s_w)) <= RTOL[dtype]


def test_fused_all_zero_row():
    x = torch.zeros(3, 64, device=DEVICE)
    x[1] = torch.randn(64)
    q_w = torch.randint(-127, 128, (16, 64), dtype=torch.int8, device=DEVICE)
    for fused in (True, False):
        out = w8a8_dynamic(x, q_w, torch.ones(16, device=DEVICE), fused=fused)
        assert torch.isfinite(out).all() and out[0].abs().max() == 0


def test_bad_inputs():
    x = torch.randn(4, 64, device=DEVICE)
    q_w = torch.randint(-127, 128, (8, 64), dtype=torch.int8, device=DEVICE)
    s_w = torch.ones(8, device=DEVICE)
    with pytest.raises(ValueError, match="dtype torch.int32"):
        w8a8_dynamic(x.int(), q_w, s_w)
    with pytest.raises(ValueError, match="K=32"):
        w8a8_dynamic(torch.randn(4, 32, device=DEVICE), q_w, s_w)
    with pytest.raises(ValueError, match="s_w must have shape"):
        w8a8_dynamic(x, q_w, torch.ones(7, device=DEVICE))
    with pytest.raises(ValueError, match="q_w must be 2-D int8"):
        w8a8_dynamic(x, q_w.float(), s_w)
    with pytest.raises(ValueError, match="contiguous"):
        quantize_per_token(torch.randn(64, 4, device=DEVICE).T)
    with pytest.raises(ValueError, match="2-D"):
        int8_matmul(torch.zeros(2, 2, 64, dtype=torch.int8, device=DEVICE), q_w, torch.ones(2), s_w)


# ---------------------------------------------------------------- fp8 e4m3
FP8 = torch.float8_e4m3fn
# fp32 sums of exact fp8 products; on an H100 the fp8 tensor cores add with fewer mantissa bits than fp32
# (Triton's default there, like torch._scaled_mm's use_fast_accum=True): a few 1e-4 of the output's max
RTOL_FP8 = TOL["fp8"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_quantize_per_token_fp8_exact(shape, dtype):
    M, K, _ = shape
    x = (torch.randn(M, K) * 3).to(dtype).to(DEVICE)
    x[0, 0] = 0.0
    q, s = quantize_per_token(x, FP8)
    q_ref, s_ref = quantize_per_token_ref(x, FP8)
    assert q.dtype == FP8 and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
    assert float(q.float().abs().max()) == 448.0  # each row's max maps to e4m3's largest value


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_fp8_matmul(shape, out_dtype):
    M, K, N = shape
    q_x, s_x = quantize_per_token_ref(torch.randn(M, K, device=DEVICE), FP8)
    q_w, s_w = quantize_per_token_ref(torch.randn(N, K, device=DEVICE) * 0.05, FP8)
    out = fp8_matmul(q_x, q_w, s_x, s_w, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert _rel(out, int8_matmul_ref(q_x, q_w, s_x, s_w)) <= RTOL_FP8[out_dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launches"])
def test_w8a8_fp8_dynamic(shape, dtype, fused):
    M, K, N = shape
    x = (torch.randn(M, K) * 2).to(dtype).to(DEVICE)
    q_w, s_w = quantize_per_token_ref(torch.randn(N, K, device=DEVICE) * 0.05, FP8)
    out = w8a8_dynamic(x, q_w, s_w, fused=fused)
    assert out.dtype == dtype
    assert _rel(out, w8a8_dynamic_ref(x, q_w, s_w)) <= RTOL_FP8[dtype]
    # and fp8 is a real approximation of the float product
    assert _rel(out, (x.float() @ (q_w.float() * s_w[:, None]).T)) < RTOL_FP8_VS_FLOAT


def test_fp8_bad_inputs():
    q_x, s_x = quantize_per_token_ref(torch.randn(4, 64, device=DEVICE), FP8)
    q_w = torch.randint(-127, 128, (8, 64), dtype=torch.int8, device=DEVICE)
    with pytest.raises(ValueError, match="q_x is torch.float8_e4m3fn but q_w is torch.int8"):
        fp8_matmul(q_x, q_w, s_x, torch.ones(8, device=DEVICE))
    with pytest.raises(ValueError, match="int8 or torch.float8_e4m3fn"):
        quantize_per_token(torch.randn(2, 8, device=DEVICE), torch.float8_e5m2)


def test_fp8_rounding_over_the_whole_range():
    """Every binade of e4m3 (subnormals, ties, carries into the exponent, ±0) rounds as torch's cast."""
    x = torch.cat([torch.logspace(-12, 8.8, 20000, base=2), torch.arange(70) * 2.0**-9])
    x = torch.stack([x, -x]).to(DEVICE)
    x[:, 0] = 448.0  # scale 1: the values are coded as they are
    q, _ = quantize_per_token(x, FP8)
    q_ref, _ = quantize_per_token_ref(x, FP8)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


# ---------------------------------------------------------------- tiny rows
MIN_AMAX = 2.0**-119  # kernels.w8a8.MIN_AMAX, written out: the tests pin the value


def _tiny_rows() -> torch.Tensor:
    """Rows whose max |x| lies around and below 2⁻¹¹⁹ (1.5e-36), down to float32 subnormals, and two normal rows."""
    g = torch.Generator().manual_seed(5)
    rows = [torch.tensor([-5e-38, 1e-37, 0.0, 3e-39, -1e-37, 2e-38, 0.0, 7e-38])]
    for amax in (1e-30, 2.0**-119 * 1.5, 2.0**-119, 1e-36, 4e-37, 1e-38, 1e-40, 1e-44):
        r = torch.randn(8, generator=g, dtype=torch.float64)
        rows.append((r / r.abs().max() * amax).float())
    rows.append(torch.zeros(8))
    rows.append(torch.randn(8, generator=g) * 3)
    return torch.stack(rows)  # (11, 8), some entries subnormal


def _codes_float64(x: torch.Tensor, qmax: float, dtype: torch.dtype) -> torch.Tensor:
    """The codes in float64 arithmetic: x · qmax / max(max|x|, 2⁻¹¹⁹) per row (0 for an all-zero row)."""
    xd = x.double().cpu()
    amax = xd.abs().amax(dim=1, keepdim=True)
    v = torch.where(amax > 0, xd * qmax / amax.clamp(min=MIN_AMAX), torch.zeros_like(xd))
    return torch.round(v).to(torch.int8) if dtype == torch.int8 else v.to(FP8)


@pytest.mark.parametrize("dtype", [torch.int8, FP8], ids=["int8", "fp8"])
def test_tiny_rows_quantize_to_finite_correct_codes(dtype):
    """qmax / max|x| overflowed float32 below ~1e-36: int8 codes were ±127 for every nonzero entry
    (−5e-38 next to a max of 1e-37 gave −127) and fp8 codes NaN. Now max|x| is floored at 2⁻¹¹⁹."""
    qmax = 127.0 if dtype == torch.int8 else 448.0
    x = _tiny_rows().to(DEVICE)
    q_ref, s_ref = quantize_per_token_ref(x, dtype)
    q, s = quantize_per_token(x, dtype)
    bits = (lambda t: t.view(torch.uint8)) if dtype == FP8 else (lambda t: t)
    assert torch.equal(bits(q), bits(q_ref)) and torch.equal(s, s_ref)  # the kernel is still its reference
    assert torch.isfinite(q.float()).all() and torch.isfinite(s).all()
    assert torch.equal(bits(q_ref.cpu()), bits(_codes_float64(x, qmax, dtype)))
    amax = x.abs().amax(dim=1).cpu()
    want_s = torch.where(amax > 0, amax.clamp(min=MIN_AMAX), amax) / qmax
    assert torch.equal(s.cpu(), want_s)
    assert q_ref[0, 0].item() == (-4 if dtype == torch.int8 else -15.0)  # −5e-38 · 127 (448) / 2⁻¹¹⁹


@pytest.mark.parametrize("dtype", [torch.int8, FP8], ids=["int8", "fp8"])
def test_tiny_rows_through_the_matmul(dtype):
    """Fused and two-launch dynamic W8A8 give the reference's finite output on the tiny rows."""
    x = _tiny_rows().to(DEVICE)
    q_w, s_w = quantize_per_token_ref(torch.randn(16, 8, generator=torch.Generator().manual_seed(6)), dtype)
    q_w, s_w = q_w.to(DEVICE), s_w.to(DEVICE)
    want = w8a8_dynamic_ref(x, q_w, s_w)
    for fused in (False, True):
        got = w8a8_dynamic(x, q_w, s_w, fused=fused)
        assert torch.isfinite(got).all()
        # rows scale differently by 1e30: compare each row to its own max
        err = (got - want).abs().amax(dim=1) / want.abs().amax(dim=1).clamp(min=1e-45)
        assert float(err.max()) <= (RTOL if dtype == torch.int8 else RTOL_FP8)[torch.float32], fused


def test_normal_rows_are_not_floored():
    """Rows with max|x| ≥ 2⁻¹¹⁹ keep the plain formula q = round(x · (127 / max|x|)), s = max|x| / 127."""
    x = torch.cat([torch.randn(6, 40) * 10.0 ** torch.arange(-30, 30, 10).float()[:, None],
                   torch.full((1, 40), MIN_AMAX)])
    amax = x.abs().amax(dim=1)
    q, s = quantize_per_token_ref(x)
    assert torch.equal(q, torch.round(x * (torch.full_like(amax, 127.0) / amax)[:, None]).to(torch.int8))
    assert torch.equal(s, amax / torch.full_like(amax, 127.0))


def test_fp8_layers_quantize_as_the_kernel_reference():
    """qtutor.methods.fp8's own per-row quantizer and the kernels' reference share the floor again."""
    from qtutor.kernels import w8a8 as k_w8
    from qtutor.methods import fp8

    assert k_w8.MIN_AMAX == fp8._MIN_AMAX == MIN_AMAX
    x = _tiny_rows()
    q1, s1 = fp8.quantize_rows_fp8(x)
    q2, s2 = quantize_per_token_ref(x, FP8)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
