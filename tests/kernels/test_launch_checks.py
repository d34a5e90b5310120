"""Every launcher checks each index and layout argument it reads through, before any launch.

An out-of-range ``g_idx``, a ``group_size`` that disagrees with the scales, a wrong
table size is a ``ValueError`` naming the argument, its value and what is allowed —
never a read outside a tensor; M = 0 gives an empty result without a launch. Also:
``kernels/`` is a leaf (it imports nothing from ``qtutor``) and each kernel file holds
its own PyTorch reference. Cases are tiny: on the CPU they run in Triton's interpreter.
"""
import ast
from pathlib import Path

import pytest
import torch

from qtutor.formats.layouts import pack_gptq
from qtutor.kernels import llm_int8 as k_int8, nf4 as k_nf4, w4a16 as k_w4, w8a8 as k_w8
from qtutor.methods.llm_int8 import llm_int8_matmul as llm_int8_any_path, vectorwise_quant
from qtutor.methods.nf4 import NF4Config, dynamic_map, normal_float_levels, quantize_4bit
from qtutor.primitives import rtn_grid_quantize
from tolerances import RTOL, rel_err  # the one table (tests/kernels/tolerances.py)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = Path(k_w4.__file__).parent


# --- the package boundary -------------------------------------------------------------

def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_kernels_are_a_leaf(path):
    assert not [n for n in _imports(path) if n == "qtutor" or n.startswith("qtutor.")]


@pytest.mark.parametrize("module, refs", [
    (k_w4, ["w4a16_ref", "dequantize_gptq_ref"]), (k_nf4, ["nf4_ref", "dequantize_nf4_ref"]),
    (k_w8, ["int8_matmul_ref", "w8a8_dynamic_ref", "quantize_per_token_ref"]), (k_int8, ["llm_int8_ref"]),
], ids=["w4a16", "nf4", "w8a8", "llm_int8"])
def test_each_kernel_file_holds_its_reference(module, refs):
    for name in refs:
        assert callable(getattr(module, name)) and name in module.__all__


# --- W4A16 ----------------------------------------------------------------------------

def _w4(K=64, N=16, group_size=32):
    p = pack_gptq(rtn_grid_quantize(torch.randn(N, K, generator=torch.Generator().manual_seed(0)), 4, group_size),
                  version=2)
    p["scales"] = p["scales"].half()
    return {k: v.to(DEVICE) for k, v in p.items()}


@pytest.mark.parametrize("bad", [2, -1, 1000], ids=["n_groups", "negative", "far"])
@pytest.mark.parametrize("group_size", [None, 0], ids=["inspect-g_idx", "act-order-path"])
def test_w4a16_g_idx_out_of_range(bad, group_size):
    p = _w4()
    g_idx = p["g_idx"].clone()
    g_idx[5] = bad
    x = torch.randn(1, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match=r"g_idx holds values from .*allowed: 0 … 1 \(scales has 2 groups\)"):
        k_w4.w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], g_idx, group_size=group_size)


@pytest.mark.parametrize("group_size", [16, 64, 20], ids=str)
def test_w4a16_group_size_must_match_the_scales(group_size):
    p = _w4()  # K = 64 in groups of 32: two rows of scales
    x = torch.randn(1, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match=rf"group_size={group_size} gives \d+ groups for K=64, but scales has 2 rows"):
        k_w4.w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"], group_size=group_size)


@pytest.mark.parametrize("group_size", [-1, 1.5, True], ids=repr)
def test_w4a16_group_size_spelling(group_size):
    p = _w4()
    with pytest.raises(ValueError, match=rf"group_size={group_size!r}: must be None"):
        k_w4.w4a16_matmul(torch.randn(1, 64, device=DEVICE).half(), p["qweight"], p["qzeros"], p["scales"],
                          p["g_idx"], group_size=group_size)


def test_w4a16_layout_shapes():
    p = _w4()
    x = torch.randn(1, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match="qweight must be 2-D"):
        k_w4.w4a16_matmul(x, p["qweight"].reshape(-1), p["qzeros"], p["scales"], p["g_idx"])
    with pytest.raises(ValueError, match="scales .* must be \\(n_groups=2, N=16\\)"):
        k_w4.w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"][:1], p["g_idx"])
    with pytest.raises(ValueError, match="g_idx must be 1-D"):
        k_w4.w4a16_matmul(x, p["qweight"], p["qzeros"], p["scales"], p["g_idx"][None])


@pytest.mark.parametrize("group_size", [None, 32, 0], ids=["inspect", "given", "act-order-path"])
def test_w4a16_empty_batch(group_size):
    p = _w4()
    out = k_w4.w4a16_matmul(torch.empty(0, 64, device=DEVICE).half(), p["qweight"], p["qzeros"], p["scales"],
                            p["g_idx"], group_size=group_size)
    assert out.shape == (0, 16) and out.dtype == torch.float16


# --- NF4 ------------------------------------------------------------------------------

def _nf4(double=True):
    st = quantize_4bit(torch.randn(16, 64, generator=torch.Generator().manual_seed(0)),
                       NF4Config(double_quant=double))
    dq = dict(absmax_code=dynamic_map().to(DEVICE), absmax2=st.absmax2.to(DEVICE), offset=st.offset.to(DEVICE),
              dq_blocksize=st.config.dq_blocksize) if double else {}
    return st.packed.to(DEVICE), st.absmax.to(DEVICE), normal_float_levels().to(DEVICE), dq


def test_nf4_empty_batch():
    packed, absmax, code, dq = _nf4()
    out = k_nf4.nf4_matmul(torch.empty(0, 64, device=DEVICE).half(), packed, absmax, code, 16, **dq)
    assert out.shape == (0, 16) and out.dtype == torch.float16


def test_nf4_tables_and_sizes():
    packed, absmax, code, dq = _nf4()
    x = torch.randn(1, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match="absmax_code must hold the 256 values"):
        k_nf4.nf4_matmul(x, packed, absmax, code, 16, **{**dq, "absmax_code": dq["absmax_code"][:100]})
    with pytest.raises(ValueError, match="offset must be one value"):
        k_nf4.nf4_matmul(x, packed, absmax, code, 16, **{**dq, "offset": torch.zeros(2, device=DEVICE)})
    for name, v in (("blocksize", 0), ("dq_blocksize", -256), ("out_features", 0)):
        kw = {**dq, name: v} if name != "out_features" else dq
        with pytest.raises(ValueError, match=rf"{name}={v}: must be a positive integer"):
            k_nf4.nf4_matmul(x, packed, absmax, code, v if name == "out_features" else 16, **kw)


# --- W8A8 -----------------------------------------------------------------------------

def test_w8a8_empty_batch():
    q_w, s_w = k_w8.quantize_per_token_ref(torch.randn(16, 32))
    q_w, s_w = q_w.to(DEVICE), s_w.to(DEVICE)
    x = torch.empty(0, 32, device=DEVICE)
    q, s = k_w8.quantize_per_token(x)
    assert q.shape == (0, 32) and s.shape == (0,)
    assert k_w8.w8a8_dynamic(x, q_w, s_w).shape == (0, 16)
    assert k_w8.int8_matmul(q, q_w, s, s_w).shape == (0, 16)


def test_w8a8_scales_must_be_float():
    q_w, s_w = k_w8.quantize_per_token_ref(torch.randn(16, 32))
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match=r"s_w must have shape \(16,\) and a float dtype"):
        k_w8.w8a8_dynamic(x.to(DEVICE), q_w.to(DEVICE), s_w.to(torch.int32).to(DEVICE))


# --- LLM.int8(): one check on both paths ---------------------------------------------

def _int8_case(M=2, K=64, N=16):
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(0)).half()
    CB, SCB, _ = vectorwise_quant((torch.randn(N, K) * 0.05).half())
    return x, CB, SCB


PATHS = {
    "kernel": lambda x, CB, SCB, t: k_int8.llm_int8_matmul(x.to(DEVICE), CB.to(DEVICE), SCB.to(DEVICE), t),
    "reference": lambda x, CB, SCB, t: k_int8.llm_int8_ref(x, CB, SCB, t),
    "cpu": lambda x, CB, SCB, t: llm_int8_any_path(x, CB, SCB, t, use_triton=False),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("threshold", [-1.0, float("nan"), -float("inf"), True, "6"], ids=repr)
def test_llm_int8_bad_threshold_same_error_on_every_path(path, threshold):
    x, CB, SCB = _int8_case()
    with pytest.raises(ValueError, match=r"threshold=.*: must be a number ≥ 0"):
        PATHS[path](x, CB, SCB, threshold)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("case", ["x-float32", "CB-K", "SCB-shape", "SCB-fp16"])
def test_llm_int8_bad_operands_same_error_on_every_path(path, case):
    x, CB, SCB = _int8_case()
    x, CB, SCB = {"x-float32": (x.float(), CB, SCB), "CB-K": (x, CB[:, :32], SCB),
                  "SCB-shape": (x, CB, SCB[:3]), "SCB-fp16": (x, CB, SCB.half())}[case]
    with pytest.raises(ValueError, match=r"float16 activations|CB must be int8|SCB must be float32"):
        PATHS[path](x, CB, SCB, 6.0)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_llm_int8_infinite_threshold_means_no_outliers(path):
    x, CB, SCB = _int8_case()
    x[:, 3] = 40.0
    got = PATHS[path](x, CB, SCB, float("inf")).cpu()
    want = k_int8.llm_int8_ref(x, CB, SCB, 0.0)
    if path == "kernel":  # fp32 sums in another order
        assert rel_err(got, want) < RTOL["llm_int8"][torch.float16]
    else:
        assert torch.equal(got, want)


def test_llm_int8_empty_batch():
    x, CB, SCB = _int8_case(M=0)
    out = PATHS["kernel"](x, CB, SCB, 6.0)
    assert out.shape == (0, 16) and out.dtype == torch.float16
