"""The LLM.int8() kernels against bitsandbytes' decomposition in PyTorch (interpreter on CPU, compiled on GPU)."""
import pytest
import torch

from qtutor.kernels.llm_int8 import llm_int8_matmul, llm_int8_ref
from qtutor.methods.llm_int8 import vectorwise_quant
from tolerances import RTOL as TOL, RTOL_LLM_INT8_ALL_OUTLIERS, rel_err  # the one table (tests/kernels/tolerances.py)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (M, K, N): off the block grid; M=1 and the small shapes split K, the large ones do not
SHAPES = [(1, 64, 64), (1, 200, 72), (5, 130, 70), (33, 576, 192), (80, 256, 96)]


_rel = rel_err


def _case(M, K, N, outlier_cols=(3, 17), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen)
    for c in outlier_cols:  # LLM.int8()'s emergent features: a few input columns far above the threshold
        if c < K:
            x[:, c] *= 12.0
    w = torch.randn(N, K, generator=gen) * 0.05
    CB, SCB, _ = vectorwise_quant(w.half())
    return x.half().to(DEVICE), CB.to(DEVICE), SCB.to(DEVICE)


@pytest.mark.parametrize("threshold", [6.0, 0.0], ids=["outliers", "no-outlier-path"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_llm_int8_matches_bitsandbytes_decomposition(shape, threshold):
    x, CB, SCB = _case(*shape)
    got = llm_int8_matmul(x, CB, SCB, threshold)
    want = llm_int8_ref(x.cpu(), CB.cpu(), SCB.cpu(), threshold)
    assert got.dtype == torch.float16 and got.shape == want.shape
    # same roundings as bitsandbytes; only the fp32 summation order inside the dot products differs
    assert _rel(got.cpu(), want) < TOL["llm_int8"][torch.float16]


@pytest.mark.parametrize("threshold", [6.0, 0.0], ids=["outliers", "no-outlier-path"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_unsplit_is_bitsandbytes_bit_for_bit(shape, threshold):
    """Without split-K the kernel rounds exactly where bitsandbytes does. The int8 part is exact
    everywhere; the fp16 outlier product is summed in fp32 in the dot's own order, which on a GPU
    may differ from cuBLAS's in the last bit."""
    x, CB, SCB = _case(*shape)
    got = llm_int8_matmul(x, CB, SCB, threshold, launch={"target_programs": 1}).cpu()
    want = llm_int8_ref(x.cpu(), CB.cpu(), SCB.cpu(), threshold)
    if DEVICE == "cpu" or threshold == 0:
        assert torch.equal(got, want)
    else:
        assert _rel(got, want) < TOL["llm_int8"][torch.float16]


def test_outlier_path_matters():
    """Dropping the fp16 part (threshold large enough to see no outlier) changes the answer a lot."""
    x, CB, SCB = _case(4, 256, 64)
    with_o = llm_int8_matmul(x, CB, SCB, 6.0)
    assert _rel(with_o.cpu(), llm_int8_ref(x.cpu(), CB.cpu(), SCB.cpu(), 6.0)) < TOL["llm_int8"][torch.float16]
    assert _rel(with_o.cpu(), llm_int8_ref(x.cpu(), CB.cpu(), SCB.cpu(), 0.0)) > 1e-2


def test_all_zero_row_and_all_outlier_row():
    x, CB, SCB = _case(3, 128, 64)
    x[0] = 0
    x[2] = 50.0  # every entry an outlier: the row's int8 part is empty
    got = llm_int8_matmul(x, CB, SCB, 6.0).cpu()
    assert torch.isfinite(got.float()).all() and got[0].abs().max() == 0
    want = (x[2:].float() @ (CB.float() * SCB[:, None] / 127).T).cpu()
    assert _rel(got[2:], want) < RTOL_LLM_INT8_ALL_OUTLIERS


def test_bad_input_is_reported():
    x, CB, SCB = _case(2, 64, 32)
    with pytest.raises(ValueError, match="float16 activations"):
        llm_int8_matmul(x.float(), CB, SCB)
    with pytest.raises(ValueError, match="CB must be"):
        llm_int8_matmul(x, CB[:, :32], SCB)
    with pytest.raises(ValueError, match="SCB must be"):
        llm_int8_matmul(x, CB, SCB.half())
    with pytest.raises(ValueError, match="threshold"):
        llm_int8_matmul(x, CB, SCB, -1.0)


def test_skipping_outlier_free_tiles_changes_nothing(monkeypatch):
    from qtutor.kernels import llm_int8 as k

    x, CB, SCB = _case(6, 576, 96, outlier_cols=(200, 450))
    skip = llm_int8_matmul(x, CB, SCB, 6.0)
    monkeypatch.setattr(k, "SKIP_CLEAN_TILES", False)
    assert torch.equal(skip, llm_int8_matmul(x, CB, SCB, 6.0))
