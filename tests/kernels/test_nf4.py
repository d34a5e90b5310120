"""The NF4 Triton kernels on bitsandbytes' own quantized weights (interpreter on CPU, compiled on GPU)."""
import pytest
import torch

bnbf = pytest.importorskip("bitsandbytes.functional")

from qtutor.kernels.nf4 import dequantize_nf4_ref, nf4_dequantize, nf4_matmul, nf4_matmul_bnb, nf4_ref  # noqa: E402
from qtutor.methods.nf4 import NF4Config, QuantType4, dynamic_map, normal_float_levels, quantize_4bit  # noqa: E402
from tolerances import RTOL as TOL, RTOL_PATHS, rel_err  # the one table (tests/kernels/tolerances.py)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (M, K, N): M=1 takes the GEMV, larger M the GEMM; K=136, 200 put 64-blocks across rows
SHAPES = [(1, 64, 64), (1, 200, 72), (3, 200, 72), (1, 576, 192), (17, 136, 264), (70, 256, 128)]
RTOL = TOL["4bit"]


_rel = rel_err


def _bnb(N, K, dtype, nested, quant_type="nf4", seed=0):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type=quant_type)
    return packed, qs


def _to(qs, device):
    qs.absmax, qs.code = qs.absmax.to(device), qs.code.to(device)
    if qs.nested:
        qs.state2.absmax, qs.state2.code, qs.offset = qs.state2.absmax.to(device), qs.state2.code.to(device), \
            qs.offset.to(device)
    return qs


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-absmax"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_nf4_matmul_on_bitsandbytes_weights(shape, dtype, nested):
    M, K, N = shape
    packed, qs = _bnb(N, K, dtype, nested)
    dense = bnbf.dequantize_4bit(packed, qs)  # bitsandbytes' own reconstruction (CPU)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = (x.float() @ dense.float().T).to(dtype)
    got = nf4_matmul_bnb(x.to(DEVICE), packed.to(DEVICE), _to(qs, DEVICE))
    assert got.dtype == dtype and got.shape == (M, N)
    assert _rel(got.cpu(), want) < RTOL[dtype]


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-absmax"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_reference_is_bitsandbytes_dequantize_bit_for_bit(quant_type, nested):
    packed, qs = _bnb(72, 200, torch.float16, nested, quant_type)
    dq = dict(absmax_code=qs.state2.code, absmax2=qs.state2.absmax, offset=qs.offset) if nested else {}
    ref = dequantize_nf4_ref(packed, qs.absmax, qs.code, (72, 200), 64, dtype=torch.float16, **dq)
    assert torch.equal(ref, bnbf.dequantize_4bit(packed, qs))


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-absmax"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(72, 200), (64, 576), (1, 8)], ids=lambda s: "x".join(map(str, s)))
def test_dequantize_kernel_is_bitsandbytes_bit_for_bit(shape, quant_type, dtype, nested):
    """The kernel behind M > 1 writes bitsandbytes' ``dequantize_4bit`` exactly (blocks across rows included),
    compared on the same device, and with ``dequantize_nf4_ref`` (the float32 product level·absmax rounded to
    nearest-even). Why the same device: on the H200 machine, where only bitsandbytes' CUDA library was carried,
    its CPU ``dequantize_4bit`` rounded 10 of the 36,864 weights at 64x576, exact ties, away from even
    (benchmarks/debug_nf4_dequant_gpu.py); the kernel there equals the reference and torch's own cast."""
    N, K = shape
    packed, qs = _bnb(N, K, dtype, nested, quant_type)
    dq = dict(absmax_code=qs.state2.code, absmax2=qs.state2.absmax, offset=qs.offset,
              dq_blocksize=qs.state2.blocksize) if nested else {}
    ref = dequantize_nf4_ref(packed, qs.absmax, qs.code, (N, K), 64, dtype=dtype,
                             **{k: v for k, v in dq.items() if k != "dq_blocksize"})
    packed, qs = packed.to(DEVICE), _to(qs, DEVICE)
    want = bnbf.dequantize_4bit(packed, qs)
    got = nf4_dequantize(packed, qs.absmax, qs.code.float(), (N, K), 64, dtype=dtype,
                         **{k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in dq.items()})
    assert got.dtype == dtype and torch.equal(got, want) and torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("large_m", ["dequant", "fused"])
def test_gemv_and_gemm_agree(large_m):
    packed, qs = _bnb(128, 256, torch.float16, True)
    x = torch.randn(4, 256).half().to(DEVICE)
    qs = _to(qs, DEVICE)
    gemv = nf4_matmul_bnb(x, packed.to(DEVICE), qs, gemv_max_m=4)
    gemm = nf4_matmul_bnb(x, packed.to(DEVICE), qs, gemv_max_m=0, large_m=large_m)
    assert _rel(gemv, gemm) < RTOL_PATHS


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(17, 136, 264), (70, 256, 128)], ids=lambda s: "x".join(map(str, s)))
def test_fused_gemm_on_bitsandbytes_weights(shape, dtype):
    """The fused ``tl.dot`` GEMM (``large_m="fused"``), no longer the default for M > 1, stays correct."""
    M, K, N = shape
    packed, qs = _bnb(N, K, dtype, True)
    dense = bnbf.dequantize_4bit(packed, qs)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = (x.float() @ dense.float().T).to(dtype)
    got = nf4_matmul_bnb(x.to(DEVICE), packed.to(DEVICE), _to(qs, DEVICE), large_m="fused")
    assert _rel(got.cpu(), want) < RTOL[dtype]


def test_qtutor_nf4_state_runs_on_the_kernel():
    """qtutor's own NF4 (byte-identical to bitsandbytes) feeds the kernel through the same fields."""
    w = torch.randn(64, 192, generator=torch.Generator().manual_seed(2)).half()
    st = quantize_4bit(w, NF4Config(QuantType4.NF4))
    x = torch.randn(1, 192).half()
    kw = dict(absmax_code=dynamic_map(), absmax2=st.absmax2, offset=st.offset)
    got = nf4_matmul(x.to(DEVICE), st.packed.to(DEVICE), st.absmax.to(DEVICE), normal_float_levels().to(DEVICE), 64,
                     **{k: v.to(DEVICE) for k, v in kw.items()})
    assert _rel(got.cpu(), nf4_ref(x, st.packed, st.absmax, normal_float_levels(), 64, **kw)) < RTOL[torch.float16]


def test_bad_input_is_reported():
    packed, qs = _bnb(64, 64, torch.float16, True)
    qs = _to(qs, DEVICE)
    packed = packed.to(DEVICE)
    x = torch.randn(1, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        nf4_matmul_bnb(x.double(), packed, qs)
    with pytest.raises(ValueError, match="needs"):
        nf4_matmul(torch.randn(1, 128, device=DEVICE).half(), packed, qs.absmax, qs.code, 64, **{})
    with pytest.raises(ValueError, match="absmax_code"):
        nf4_matmul(x, packed, qs.absmax, qs.code, 64)
    with pytest.raises(ValueError, match="16 float32 levels"):
        nf4_matmul(x, packed, qs.absmax, qs.code.half(), 64)
    with pytest.raises(ValueError, match="large_m='tiled': allowed values are"):
        nf4_matmul_bnb(x, packed, qs, large_m="tiled")
    with pytest.raises(ValueError, match="dtype=torch.float64"):
        nf4_dequantize(packed, qs.absmax, qs.code, (64, 64), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape=\(64,\): must be \(out_features, in_features\)"):
        nf4_dequantize(packed, qs.absmax, qs.code, (64,))
    with pytest.raises(ValueError, match="packed holds 4096 codes, the weight \\(64, 128\\) needs 8192"):
        nf4_dequantize(packed, qs.absmax, qs.code, (64, 128))
    with pytest.raises(ValueError, match="multiple of 8"):
        nf4_matmul(torch.randn(2, 60, device=DEVICE).half(), packed[:60], qs.absmax[:30], qs.code, 2,
                   absmax_code=qs.state2.code, absmax2=qs.state2.absmax, offset=qs.offset)


@pytest.mark.parametrize("x_split", [False, True], ids=["x-per-code", "x-one-load"])
@pytest.mark.parametrize("block_k", [64, 256], ids=lambda b: f"BK{b}")
@pytest.mark.parametrize("shape", [(1, 576, 192), (1, 200, 72), (2, 512, 64)], ids=lambda s: "x".join(map(str, s)))
def test_gemv_variants(shape, block_k, x_split):
    """Whole-block tiles (K = 576, 512) read each row's absmaxes once; K = 200 puts blocks across rows."""
    M, K, N = shape
    packed, qs = _bnb(N, K, torch.float16, True)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(4)).half()
    want = (x.float() @ bnbf.dequantize_4bit(packed, qs).float().T).half()
    got = nf4_matmul_bnb(x.to(DEVICE), packed.to(DEVICE), _to(qs, DEVICE), gemv_max_m=2,
                         gemv={"x_split": x_split, "block_k": block_k})
    assert _rel(got.cpu(), want) < RTOL[torch.float16]
