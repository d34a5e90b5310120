"""The exact int8 product: every path equals ``torch._int_mm`` bit for bit."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.primitives import INT8_MM_BACKENDS, int8_mm, int8_mm_backend
from qtutor.primitives.intmm import F32_EXACT_K

SHAPES = [(1, 576, 1536), (17, 1536, 576), (64, 576, 192), (33, 2 * F32_EXACT_K + 1, 40), (5, 4096, 24)]


def _cases(M, K, N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    yield "random", torch.randint(-128, 128, (M, K), generator=gen, dtype=torch.int8), \
        torch.randint(-128, 128, (K, N), generator=gen, dtype=torch.int8)
    yield "all +127", torch.full((M, K), 127, dtype=torch.int8), torch.full((K, N), 127, dtype=torch.int8)
    yield "all -127 x +127", torch.full((M, K), -127, dtype=torch.int8), torch.full((K, N), 127, dtype=torch.int8)
    yield "all -128", torch.full((M, K), -128, dtype=torch.int8), torch.full((K, N), -128, dtype=torch.int8)
    alt = torch.tensor([127, -127], dtype=torch.int8).repeat(K // 2 + 1)[:K]  # sums cancel, partial sums large
    yield "alternating", alt.expand(M, K).contiguous(), torch.full((K, N), 127, dtype=torch.int8)


@pytest.mark.parametrize("backend", INT8_MM_BACKENDS)
@pytest.mark.parametrize("M,K,N", SHAPES, ids=lambda v: str(v))
def test_equals_int_mm(backend, M, K, N):
    for name, a, b_t in _cases(M, K, N):
        want = torch._int_mm(a, b_t)
        got = int8_mm(a, b_t, backend=backend)
        assert got.dtype == torch.int32 and got.shape == (M, N)
        assert torch.equal(got, want), f"{backend} differs from torch._int_mm on {name} {M}x{K}x{N}"


def test_non_contiguous_operand_and_auto_backend():
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(-128, 128, (40, 1536), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (576, 1536), generator=gen, dtype=torch.int8)
    assert torch.equal(int8_mm(a, w.T), torch._int_mm(a, w.T))
    assert int8_mm_backend("cpu") in INT8_MM_BACKENDS


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 9), K=st.integers(1, 2200), N=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_property_float_paths_exact(M, K, N, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (M, K), generator=gen, dtype=torch.int8)
    b_t = torch.randint(-128, 128, (K, N), generator=gen, dtype=torch.int8)
    want = torch._int_mm(a, b_t)
    for backend in ("float32", "float64"):
        assert torch.equal(int8_mm(a, b_t, backend=backend), want)


def test_forced_backend_env(monkeypatch):
    monkeypatch.setenv("QTUTOR_INT8_MM", "float64")
    assert int8_mm_backend() == "float64"
    monkeypatch.setenv("QTUTOR_INT8_MM", "fast")
    with pytest.raises(ValueError, match="QTUTOR_INT8_MM='fast'"):
        int8_mm_backend()


@pytest.mark.parametrize("bad", [
    dict(a=torch.zeros(2, 3), b_t=torch.zeros(3, 2, dtype=torch.int8), match="a must be a 2-D int8"),
    dict(a=torch.zeros(2, 3, dtype=torch.int8), b_t=torch.zeros(4, 2, dtype=torch.int8), match="inner sizes"),
    dict(a=torch.zeros(2, 3, dtype=torch.int8), b_t=torch.zeros(3, dtype=torch.int8), match="b_t must be"),
], ids=["float a", "inner mismatch", "1-D b_t"])
def test_bad_input(bad):
    with pytest.raises(ValueError, match=bad.pop("match")):
        int8_mm(**bad)


def test_bad_backend_name():
    a = torch.zeros(2, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="backend='blas'"):
        int8_mm(a, a.T, backend="blas")
