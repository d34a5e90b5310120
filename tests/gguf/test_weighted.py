"""GGUF with an importance matrix: byte-identical with llama.cpp's ``quantize_<type>(…, quant_weights)``.

The importance matrix is computed on SmolLM2 from calibration text (``compute_imatrix``),
and rows of real tensors are quantized by qtutor and by llama.cpp's ``ggml-quants.c``
(llama-cpp-python 0.3.36, compiled by ``conftest.py``'s fixture). Runs in CI.
"""
import numpy as np
import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.gguf import quantize_blocks
from qtutor.gguf.imatrix import Imatrix, compute_imatrix, gguf_name, read_imatrix, write_imatrix
from qtutor.gguf.io import gguf_tensors_from_hf
from qtutor.gguf.weighted import WEIGHTED_TYPES, quantize_weighted
from qtutor.model import decoder_linears

# rows of tensors whose row length fits every type (1536 = 6 x 256) or only the 32-blocks (576)
TENSORS = {"K": ("blk.0.ffn_down.weight", "blk.15.ffn_down.weight", "blk.29.ffn_down.weight"),
           "legacy": ("blk.0.attn_q.weight", "blk.7.ffn_gate.weight", "blk.29.attn_v.weight", "blk.3.ffn_down.weight")}
N_ROWS = 48


@pytest.fixture(scope="module")
def real(smollm2):
    model, tokenizer = smollm2
    torch.manual_seed(0)
    ids = calibration_samples(tokenizer, n_samples=4, seq_len=128, seed=0)
    imatrix = compute_imatrix(model, ids)
    return gguf_tensors_from_hf(model), imatrix


def _cases(kind):
    return [(t, name) for t in WEIGHTED_TYPES if (t.endswith("_K")) == (kind == "K") for name in TENSORS[kind]]


@pytest.mark.parametrize("type_name,tensor", _cases("K") + _cases("legacy") + [(t, n) for t in WEIGHTED_TYPES
                         if t.endswith("_K") for n in TENSORS["legacy"][3:]], ids=lambda v: v)
def test_bytes_equal_llama_cpp(llama_cpp_ref, real, type_name, tensor):
    tensors, imatrix = real
    a = tensors[tensor][:N_ROWS]
    qw = imatrix.importance(tensor)
    ours = quantize_weighted(a, qw, type_name)
    theirs = llama_cpp_ref.quantize_weighted(a, qw, type_name)
    size = llama_cpp_ref.block_size(type_name)
    differ = (ours.reshape(-1, size) != theirs.reshape(-1, size)).any(axis=1)
    assert not differ.any(), f"{differ.sum()} of {differ.size} {type_name} blocks differ"


@pytest.mark.parametrize("type_name", WEIGHTED_TYPES)
def test_edge_rows(llama_cpp_ref, type_name):
    """Zero rows, constant rows, one spike, zero importances, and an importance of 1 everywhere."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((6, 512)) * 0.02).astype(np.float32)
    a[0] = 0
    a[1] = 0.25
    a[2, :] = 0
    a[2, 300] = -3.0
    qw = (rng.random(512) ** 4).astype(np.float32)
    qw[:40] = 0
    for w in (qw, np.ones(512, np.float32)):
        ours = quantize_weighted(a, w, type_name)
        assert np.array_equal(ours, llama_cpp_ref.quantize_weighted(a, w, type_name))


def test_q8_0_ignores_the_imatrix():
    a = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    assert np.array_equal(quantize_weighted(a, np.arange(64, dtype=np.float32), "Q8_0").reshape(-1, 34),
                          quantize_blocks(a.reshape(-1, 32), "Q8_0"))


def test_imatrix_is_mean_of_squares(smollm2):
    model, _ = smollm2
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = {}
    name = "model.layers.2.mlp.down_proj"
    h = decoder_linears(model)[name].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    try:
        im = compute_imatrix(model, ids[:1])
    finally:
        h.remove()
    x = seen["x"].reshape(-1, seen["x"].shape[-1]).double()
    assert im.counts[gguf_name(name)] == 16
    assert np.allclose(im.importance("blk.2.ffn_down.weight"), (x * x).mean(0).numpy(), rtol=1e-6)
    assert len(im) == 7 * len(model.model.layers)
    assert np.array_equal(im.importance("blk.2.attn_q.weight"), im.importance("blk.2.attn_v.weight"))


def test_file_round_trip(tmp_path):
    im = Imatrix({"blk.0.attn_q.weight": np.arange(8, dtype=np.float64)}, {"blk.0.attn_q.weight": 512})
    write_imatrix(tmp_path / "imatrix.gguf", im, dataset="wikitext", chunk_size=512)
    back = read_imatrix(tmp_path / "imatrix.gguf")
    assert back.counts == im.counts and np.array_equal(back.sums["blk.0.attn_q.weight"], im.sums["blk.0.attn_q.weight"])


def test_bad_input():
    with pytest.raises(ValueError, match="not one of"):
        quantize_weighted(np.zeros((1, 256)), np.ones(256), "Q7_K")
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_weighted(np.zeros((1, 576)), np.ones(576), "Q4_K")
    with pytest.raises(ValueError, match="n_per_row"):
        quantize_weighted(np.zeros((1, 256)), np.ones(255), "Q4_K")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_weighted(np.zeros((1, 256)), np.full(256, np.inf), "Q4_0")


@pytest.mark.parametrize("type_name", WEIGHTED_TYPES)
def test_gaussian_rows_heavy_tailed_importance(llama_cpp_ref, type_name):
    """Rows where the rarer trials of the searches win (e.g. make_qx_quants' step -9): a wider net than SmolLM2's rows."""
    rng = np.random.default_rng(2)
    a = (rng.standard_normal((16, 1536)) * 0.05).astype(np.float32)
    qw = (rng.random(1536) ** 3 * 2).astype(np.float32)
    assert np.array_equal(quantize_weighted(a, qw, type_name), llama_cpp_ref.quantize_weighted(a, qw, type_name))
