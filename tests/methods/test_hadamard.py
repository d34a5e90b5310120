"""Hadamard matrices: orthogonality, the fast product, the orders SmolLM2 needs, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from qtutor.methods.hadamard import (
    apply_hadamard, hadamard_factors, hadamard_matrix, is_hadamard_order, random_signs,
)


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 24, 48, 64, 72, 128, 256, 576, 1536])
def test_orthonormal_with_entries_pm_one(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.abs() * math.sqrt(n), torch.ones(n, n, dtype=torch.float64), atol=1e-12)


def test_smollm2_widths_factor_cheaply():
    assert [f.shape[0] for f in hadamard_factors(576)] == [72, 8]
    assert [f.shape[0] for f in hadamard_factors(1536)] == [12, 128]


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([4, 12, 20, 48, 72, 96, 576, 1536]), rows=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_fast_product_matches_dense(n, rows, seed):
    x = torch.randn(rows, 3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fast = apply_hadamard(x, hadamard_factors(n))
    assert fast.shape == x.shape
    assert torch.allclose(fast, x @ hadamard_matrix(n), atol=1e-10)


def test_fast_product_keeps_dtype_and_norm():
    x = torch.randn(7, 576)
    y = apply_hadamard(x, hadamard_factors(576))
    assert y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)


def test_rotation_spreads_a_single_outlier():
    x = torch.zeros(1, 576)
    x[0, 17] = 100.0
    y = apply_hadamard(x, hadamard_factors(576))
    assert torch.allclose(y.abs(), torch.full_like(y, 100.0 / math.sqrt(576)), atol=1e-4)


def test_random_signs_are_seeded():
    a, b = random_signs(64, 3), random_signs(64, 3)
    assert torch.equal(a, b) and set(a.tolist()) == {-1.0, 1.0}
    assert not torch.equal(random_signs(64, 4), a)


@pytest.mark.parametrize("n", [3, 6, 10, 0, -4, 2.0, True, 232])  # 232 = 8·29: no power-of-two × Paley split (231, 115, 57 are not q ≡ 3 mod 4 primes)
def test_bad_orders_are_refused(n):
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1 and is_hadamard_order(n):
        pytest.skip(f"{n} is reachable")
    assert not is_hadamard_order(n)
    with pytest.raises(ValueError, match="n="):
        hadamard_factors(n)


def test_width_mismatch_names_both():
    with pytest.raises(ValueError, match="576.*12|12.*576"):
        apply_hadamard(torch.zeros(2, 576), hadamard_factors(12))
