"""The W4A16 Triton kernels against their PyTorch reference (interpreter on CPU, compiled on GPU)."""
import pytest
import torch

from qtutor.formats.layouts import pack_gptq
from qtutor.kernels.w4a16 import dequantize_gptq_ref, w4a16_matmul, w4a16_ref
from qtutor.primitives import QuantizedWeight, rtn_grid_quantize
from tolerances import RTOL as TOL, RTOL_PATHS, rel_err  # the one table (tests/kernels/tolerances.py)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (M, K, N): M=1…3 take the GEMV, 17 and 70 the GEMM; K and N off the block grid
SHAPES = [(1, 64, 64), (3, 200, 72), (1, 576, 192), (17, 136, 264), (70, 256, 128)]
RTOL = TOL["4bit"]


def _packed(K, N, group_size, dtype, act_order=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qw = rtn_grid_quantize(torch.randn(N, K, generator=gen), 4, group_size)
    if act_order:  # GPTQ's act-order: groups follow a permutation of the input columns
        perm = torch.randperm(K, generator=gen)
        qw = QuantizedWeight(qw.q, qw.scale, qw.zero, qw.g_idx[perm].contiguous(), 4, group_size)
    p = pack_gptq(qw, version=2)
    p["scales"] = p["scales"].to(dtype)
    return qw, {k: v.to(DEVICE) for k, v in p.items()}


_rel = rel_err


def _ids(s):
    return "x".join(map(str, s))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act_order", [False, True], ids=["ordered", "act-order"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_w4a16_matches_reference(shape, act_order, dtype):
    M, K, N = shape
    qw, p = _packed(K, N, 64, dtype, act_order)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    got = w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"])
    want = w4a16_ref(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"])
    assert got.dtype == dtype and got.shape == (M, N)
    assert _rel(got, want) < RTOL[dtype]


def test_reference_dequantizes_the_packed_weight():
    qw, p = _packed(200, 72, 64, torch.float16, act_order=True)
    dense = dequantize_gptq_ref(p["qweight"].cpu(), p["qzeros"].cpu(), p["scales"].float().cpu(), p["g_idx"].cpu())
    scale16 = QuantizedWeight(qw.q, p["scales"].float().cpu().T.contiguous(), qw.zero, qw.g_idx, 4, 64)
    assert torch.equal(dense, scale16.dequantize().T)


def test_gemv_and_gemm_agree():
    _, p = _packed(256, 128, 128, torch.float16)
    x = torch.randn(8, 256).half().to(DEVICE)
    gemv = w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"], gemv_max_m=8)
    gemm = w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"], gemv_max_m=0)
    assert _rel(gemv, gemm) < RTOL_PATHS


def test_bad_input_is_reported():
    _, p = _packed(64, 64, 64, torch.float16)
    args = (p["qweight"], p["qzeros"], p["scales"], p["g_idx"])
    x = torch.randn(2, 64).half().to(DEVICE)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        w4a16_matmul(x.float(), *args)
    with pytest.raises(ValueError, match="K=72"):
        w4a16_matmul(torch.randn(2, 72).half().to(DEVICE), *args)
    with pytest.raises(ValueError, match="contiguous"):
        w4a16_matmul(torch.randn(64, 2).half().to(DEVICE).T, *args)
    with pytest.raises(ValueError, match="g_idx must have K=64"):
        w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"][:10])
    with pytest.raises(ValueError, match="int32"):
        w4a16_matmul(x, p["qweight"].long(), p["qzeros"], p["scales"], p["g_idx"])


@pytest.mark.parametrize("group_size", [None, 64, 0], ids=["inspect-g_idx", "given", "act-order-path"])
def test_group_paths_agree(group_size):
    _, p = _packed(200, 72, 64, torch.float16)
    x = torch.randn(3, 200).half().to(DEVICE)
    want = w4a16_ref(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"])
    got = w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"], group_size=group_size)
    assert _rel(got, want) < RTOL[torch.float16]


def test_split_k_tail_past_k_reads_no_garbage():
    """M=4, K=4096: the last K-slice of the GEMV starts beyond K; its scales must not be read out of bounds."""
    _, p = _packed(4096, 64, 128, torch.float16)
    p["scales"] = torch.cat([p["scales"], torch.full_like(p["scales"][:1], float("nan"))])[:-1]  # same shape
    x = torch.randn(4, 4096).half().to(DEVICE)
    got = w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"], group_size=128)
    assert torch.isfinite(got).all()
    assert _rel(got, w4a16_ref(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"])) < RTOL[torch.float16]


def test_split_k_leaves_its_workspace_clean(monkeypatch):
    """One-launch split-K sums go through a shared fp32 workspace that the last program of each tile
    reads and clears: a second call (another layer's, say) must start from zeros and give the same answer."""
    from qtutor.kernels import _launch
    from qtutor.kernels._launch import _WORKSPACES

    monkeypatch.setattr(_launch, "ONE_LAUNCH_SPLIT_K", True)
    _, p = _packed(512, 64, 128, torch.float16)
    x = torch.randn(1, 512).half().to(DEVICE)
    first = w4a16_matmul(x, **p, gemv={"block_k": 64, "target_programs": 64})
    for ws, cnt in _WORKSPACES.values():
        assert not ws.any() and not cnt.any()
    assert torch.equal(first, w4a16_matmul(x, **p, gemv={"block_k": 64, "target_programs": 64}))
    x5 = torch.randn(5, 512).half().to(DEVICE)
    gemm = w4a16_matmul(x5, **p, gemm={"block_k": 64, "target_programs": 64})  # K in 8 slices
    assert _rel(gemm, w4a16_ref(x5, **p)) < RTOL[torch.float16]
    for ws, cnt in _WORKSPACES.values():
        assert not ws.any() and not cnt.any()


GEMV_VARIANTS = {"x-per-nibble": {"x_split": False, "fold_zero": False},
                 "x-one-load": {"x_split": True, "fold_zero": False},
                 "fold-zero": {"x_split": True, "fold_zero": True}}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", GEMV_VARIANTS)
@pytest.mark.parametrize("shape", [(1, 512, 64), (1, 576, 192), (2, 200, 72)], ids=_ids)
def test_gemv_variants(shape, variant, dtype):
    M, K, N = shape
    _, p = _packed(K, N, 64, dtype)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    got = w4a16_matmul(x, **p, gemv_max_m=2, gemv=GEMV_VARIANTS[variant])
    assert _rel(got, w4a16_ref(x, **p)) < RTOL[dtype]


@pytest.mark.parametrize("offset", [0.0, 4.0, -30.0])
def test_fold_zero_keeps_precision_when_inputs_share_a_large_offset(offset):
    """Folding the zero-point subtracts (16 + z)·Σx from Σ(16 + q)·x: inputs far from zero, all of one sign,
    make both sums large next to their difference. The float32 sums keep the fp16 result within tolerance."""
    _, p = _packed(4096, 64, 128, torch.float16, seed=5)
    gen = torch.Generator().manual_seed(6)
    x = (offset + torch.randn(1, 4096, generator=gen)).half().to(DEVICE)
    got = w4a16_matmul(x, **p, gemv=GEMV_VARIANTS["fold-zero"])
    assert _rel(got, w4a16_ref(x, **p)) < RTOL[torch.float16]


def test_split_k_epilogues_agree(monkeypatch):
    """One launch (last program stores) and three (memset, atomics, cast) give the same sums."""
    from qtutor.kernels import _launch

    monkeypatch.setattr(_launch, "ONE_LAUNCH_SPLIT_K", True)
    _, p = _packed(512, 64, 128, torch.float16)
    x = torch.randn(3, 512).half().to(DEVICE)
    one = [w4a16_matmul(x[:1], **p, gemv={"target_programs": 64}), w4a16_matmul(x, **p, gemm={"target_programs": 64})]
    monkeypatch.setattr(_launch, "ONE_LAUNCH_SPLIT_K", False)
    three = [w4a16_matmul(x[:1], **p, gemv={"target_programs": 64}), w4a16_matmul(x, **p, gemm={"target_programs": 64})]
    for a, b in zip(one, three):
        assert _rel(a, b) < RTOL_PATHS
