"""k-quants: decoding agrees with gguf-py; encoding is byte-identical to llama.cpp's reference quantizers.

The byte comparison compiles llama.cpp's ``ggml-quants.c`` (llama-cpp-python 0.3.36's
vendored copy, the version the notebooks cite) with ``harness/kquant_ref.c``; see
``conftest.py`` for where the source package comes from. It runs in CI.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from qtutor.gguf import (
    KQUANT_TYPES,
    dequantize_kquant,
    kquant_type_size,
    pack_scales_k4,
    quantize_kquant,
    unpack_scales_k4,
)
from qtutor.model import decoder_linears

BITS = {"Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}


def _superblocks(model, n=400):
    w = np.concatenate([m.weight.detach().numpy().reshape(-1) for m in list(decoder_linears(model).values())[:14]])
    return w[: n * 256].reshape(n, 256)


@pytest.mark.parametrize("name", KQUANT_TYPES)
def test_decoder_equals_gguf_py_and_error_is_small(smollm2, name):
    model, _ = smollm2
    x = _superblocks(model)
    blocks = quantize_kquant(x, name)
    assert blocks.shape == (len(x), kquant_type_size(name)) and blocks.dtype == np.uint8
    assert kquant_type_size(name) * 8 / 256 == BITS[name]
    ours = dequantize_kquant(blocks, name)
    ref = quants.dequantize(blocks.reshape(-1), getattr(GGMLQuantizationType, name)).reshape(-1, 256)
    assert np.array_equal(ours, ref)
    rel = np.linalg.norm(ours - x) / np.linalg.norm(x)
    assert rel < {"Q2_K": 0.45, "Q3_K": 0.25, "Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03}[name]


def test_more_bits_less_error():
    # Gaussian data: SmolLM2's own weights sit on Q4_1 grids of 32, which Q4_K's 32-wide
    # sub-blocks nearly reproduce, so on them Q4_K can beat Q5_K (notebook 10 shows it).
    x = np.random.default_rng(1).standard_normal((200, 256)).astype(np.float32)
    errs = [np.linalg.norm(dequantize_kquant(quantize_kquant(x, n), n) - x) for n in KQUANT_TYPES]
    assert errs == sorted(errs, reverse=True)


def test_scale_packing_round_trip():
    rng = np.random.default_rng(0)
    ls, lm = rng.integers(0, 64, (50, 8)), rng.integers(0, 64, (50, 8))
    packed = pack_scales_k4(ls, lm)
    assert packed.shape == (50, 12)
    sc, mn = unpack_scales_k4(packed)
    assert np.array_equal(sc, ls) and np.array_equal(mn, lm)


@pytest.mark.parametrize("name", KQUANT_TYPES)
def test_zero_and_constant_superblocks(name):
    x = np.zeros((3, 256), np.float32)
    x[1] = 0.25
    x[2, 7] = -3.0
    out = dequantize_kquant(quantize_kquant(x, name), name)
    assert np.isfinite(out).all() and np.all(out[0] == 0)
    assert abs(out[2, 7] + 3.0) < 0.2


def test_bad_input():
    with pytest.raises(ValueError, match="not one of"):
        quantize_kquant(np.zeros((1, 256)), "Q7_K")
    with pytest.raises(ValueError, match=r"\(n_superblocks, 256\)"):
        quantize_kquant(np.zeros((1, 576)), "Q4_K")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_kquant(np.full((1, 256), np.nan), "Q6_K")
    with pytest.raises(ValueError, match=r"shape \(n, 144\)"):
        dequantize_kquant(np.zeros((1, 143), np.uint8), "Q4_K")


# --- byte identity with llama.cpp itself --------------------------------------------------
# The ``llama_cpp_ref`` fixture (tests/gguf/conftest.py) compiles llama.cpp's
# ggml-quants.c from the llama-cpp-python 0.3.36 source package with
# tests/gguf/harness/kquant_ref.c and calls its quantize_row_<type>_ref.

REAL_TENSORS = ["model.layers.0.self_attn.q_proj", "model.layers.10.mlp.down_proj", "model.layers.29.mlp.up_proj",
                "model.layers.5.self_attn.v_proj"]
N_REAL = 64 * 256  # weights taken from each tensor: 64 super-blocks, 512 blocks of 32


def _edge_superblocks() -> np.ndarray:
    """Super-blocks that take the quantizers' special branches: zero, constant, one spike, tiny, huge, heavy-tailed."""
    rng = np.random.default_rng(0)
    spike = np.zeros(256)
    spike[7] = -3.0
    return np.stack([
        np.zeros(256), np.full(256, 0.25), np.full(256, -3.0), spike,
        rng.standard_normal(256) * 1e-3, rng.standard_normal(256) * 1e-7, rng.standard_normal(256) * 100,
        rng.standard_normal(256) ** 3, np.abs(rng.standard_normal(256)), -np.abs(rng.standard_normal(256)),
        np.where(np.arange(256) % 16 == 0, 1.0, 0.0),  # one nonzero per 16-wide sub-block
    ]).astype(np.float32)


@pytest.fixture(scope="module")
def real_weights(smollm2) -> np.ndarray:
    """(n, 256) float32: consecutive weights of a few real tensors (rows of 576 do not split into 256s)."""
    model, _ = smollm2
    w = [model.get_submodule(n).weight.detach().numpy().reshape(-1)[:N_REAL] for n in REAL_TENSORS]
    return np.concatenate(w + [_edge_superblocks().reshape(-1)]).reshape(-1, 256)


def _first_difference(ours: np.ndarray, ref: np.ndarray) -> str:
    rows = np.nonzero((ours != ref).any(axis=1))[0]
    if len(rows) == 0:
        return ""
    r = rows[0]
    cols = np.nonzero(ours[r] != ref[r])[0]
    return (f"{len(rows)} of {len(ours)} blocks differ; first: block {r}, bytes {cols[:8].tolist()}: "
            f"qtutor {ours[r, cols[:8]].tolist()} llama.cpp {ref[r, cols[:8]].tolist()}")


@pytest.mark.parametrize("name", KQUANT_TYPES)
def test_byte_identical_to_llama_cpp(llama_cpp_ref, real_weights, name):
    assert llama_cpp_ref.block_size(name) == kquant_type_size(name)
    ours, ref = quantize_kquant(real_weights, name), llama_cpp_ref.quantize(real_weights, name)
    assert np.array_equal(ours, ref), _first_difference(ours, ref)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_legacy_byte_identical_to_llama_cpp(llama_cpp_ref, real_weights, name):
    from qtutor.gguf import quantize_blocks, type_size

    x = real_weights.reshape(-1, 32)
    assert llama_cpp_ref.block_size(name) == type_size(name)
    ours, ref = quantize_blocks(x, name), llama_cpp_ref.quantize(x, name)
    assert np.array_equal(ours, ref), _first_difference(ours, ref)


@pytest.mark.parametrize("name", ["Q4_0", "Q5_0"])
def test_negative_zero_block_like_llama_cpp(llama_cpp_ref, name):
    from qtutor.gguf import quantize_blocks

    x = np.full((1, 32), -0.0, np.float32)
    assert np.array_equal(quantize_blocks(x, name), llama_cpp_ref.quantize(x, name))
