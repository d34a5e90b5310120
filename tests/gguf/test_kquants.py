"""k-quants: decoding agrees with gguf-py; encoding follows llama.cpp's reference quantizers.

The byte comparison with llama.cpp itself is opt-in (it needs a built llama.cpp):
set ``QTUTOR_LLAMA_CPP_QUANTIZE`` to an executable called as
``EXE TYPE n_per_row in.f32 out.bin`` that runs llama.cpp's ``quantize_<type>``
(no importance matrix) over float32 rows and writes the blocks.  The recorded
result is in ``benchmarks/results/llama_cpp_byte_comparison.json``.
"""
import os
import subprocess

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


@pytest.mark.skipif("QTUTOR_LLAMA_CPP_QUANTIZE" not in os.environ, reason="opt-in: needs a built llama.cpp quantizer")
@pytest.mark.parametrize("name", KQUANT_TYPES)
def test_byte_identical_to_llama_cpp(smollm2, name, tmp_path):
    model, _ = smollm2
    x = _superblocks(model, 2000)
    x.tofile(tmp_path / "x.f32")
    subprocess.run([os.environ["QTUTOR_LLAMA_CPP_QUANTIZE"], name, "256", tmp_path / "x.f32", tmp_path / "out.bin"], check=True)
    ref = np.fromfile(tmp_path / "out.bin", dtype=np.uint8).reshape(-1, kquant_type_size(name))
    assert np.array_equal(quantize_kquant(x, name), ref)
