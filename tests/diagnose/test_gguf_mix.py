"""GGML types as allocator options: exact stored sizes, llama.cpp's mixtures, exact allocation, the round trip."""
import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.diagnose.allocate import linear_shapes
from qtutor.diagnose.gguf_mix import (GGML_TYPES, GGMLType, allocate_ggml, file_type_types, ggml_mixed, ggml_options,
                                      mixture_bits)
from qtutor.gguf.io import dequantized_like_gguf, quantize_tensor
from qtutor.model import decoder_linears

SMOLLM2 = dict(vocab_size=96, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=64, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def smollm2_shaped():
    """SmolLM2-135M's 30 blocks on the meta device: its shapes and config, no weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2))


@pytest.mark.parametrize("t", GGML_TYPES)
def test_bits_are_the_bytes_the_coder_writes(t):
    w = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    assert GGMLType(t).bits(6, 512) == quantize_tensor(w, t).nbytes * 8


def test_options_follow_the_row_length():
    assert [o.name for o in ggml_options(576)] == ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
    assert [o.name for o in ggml_options(1536)] == list(GGML_TYPES)
    with pytest.raises(ValueError, match="rows of 576 weights do not split into blocks of 256"):
        GGMLType("Q4_K").bits(576, 576)
    with pytest.raises(ValueError, match="GGML type 'Q4_2'"):
        GGMLType("Q4_2")


def test_llama_cpp_mixtures_on_smollm2_shapes(smollm2_shaped):
    """The per-tensor types llama-quantize picks for SmolLM2 (576-long rows fall back from the k-quants)."""
    q4km = file_type_types(smollm2_shaped, "Q4_K_M")
    assert collections.Counter(q4km.values()) == {"Q5_0": 166, "Q4_K": 16, "Q8_0": 14, "Q6_K": 14}
    assert q4km["model.layers.0.self_attn.v_proj"] == "Q8_0"  # Q6_K in a use_more_bits layer, 576 rows → Q8_0
    assert q4km["model.layers.0.mlp.down_proj"] == "Q6_K"
    assert q4km["model.layers.4.mlp.down_proj"] == "Q4_K"
    shapes = linear_shapes(smollm2_shaped)
    n = sum(o * i for o, i in shapes.values())
    assert mixture_bits(shapes, q4km) / n == pytest.approx(5.534375, abs=1e-6)
    assert mixture_bits(shapes, file_type_types(smollm2_shaped, "Q8_0")) / n == 8.5
    with pytest.raises(ValueError, match="types has no entry for layer"):
        mixture_bits(shapes, {})


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), file_type=st.sampled_from(["Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M"]))
def test_allocation_at_a_mixtures_size_never_does_worse(smollm2_shaped, seed, file_type):
    """Exact sizes: llama.cpp's own mixture is a candidate, so the optimum's summed damage is never above it."""
    shapes = linear_shapes(smollm2_shaped)
    rng = np.random.default_rng(seed)
    damage = {n: {t: float(rng.random()) for t in GGML_TYPES} for n in shapes}
    llama = file_type_types(smollm2_shaped, file_type)
    bits = mixture_bits(shapes, llama)
    n = sum(o * i for o, i in shapes.values())
    alloc = allocate_ggml(damage, shapes, bits / n, [t for t in GGML_TYPES if t != "Q4_1"])
    assert alloc.damage <= sum(damage[k][t] for k, t in llama.items()) + 1e-9
    chosen = {k: o.name for k, o in alloc.schemes.items()}
    assert mixture_bits(shapes, chosen) <= bits
    assert all(GGMLType(t).fits(shapes[k][1]) and t != "Q4_1" for k, t in chosen.items())


def test_allocation_refuses_bad_input(smollm2_shaped):
    shapes = linear_shapes(smollm2_shaped)
    damage = {n: {t: 1.0 for t in GGML_TYPES} for n in shapes}
    with pytest.raises(ValueError, match="none of .* splits its rows"):
        allocate_ggml(damage, shapes, 8.0, ["Q4_K"])
    del damage["model.layers.3.mlp.down_proj"]["Q3_K"]
    with pytest.raises(ValueError, match=r"damage\['model.layers.3.mlp.down_proj'\] has no value for Q3_K"):
        allocate_ggml(damage, shapes, 8.0)
    damage = {n: {t: 1.0 for t in GGML_TYPES} for n in shapes}
    with pytest.raises(ValueError, match="below the smallest allowed"):
        allocate_ggml(damage, shapes, 3.0)


def test_round_trip_matches_the_gguf_path_and_restores(make_tiny_llama):
    """Row order does not matter to a block coder: HF layout and GGUF's permuted q/k give the same weights."""
    model = make_tiny_llama(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(decoder_linears(model))
    types = {n: ("Q4_K" if n.endswith("down_proj") else "Q5_0") for n in names}
    via_gguf = make_tiny_llama(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    from qtutor.gguf.imatrix import gguf_name

    dequantized_like_gguf(via_gguf, {gguf_name(n): t for n, t in types.items()})
    with ggml_mixed(model, types):
        for n, m in decoder_linears(model).items():
            assert torch.equal(m.weight, decoder_linears(via_gguf)[n].weight), n
    assert all(torch.equal(v, float_state[k]) for k, v in model.state_dict().items())


def test_round_trip_checks_before_touching(make_tiny_llama):
    model = make_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(decoder_linears(model))
    with pytest.raises(ValueError, match="rows of 64 weights do not split into blocks of 256"):
        with ggml_mixed(model, {names[0]: "Q8_0", names[1]: "Q4_K"}):
            pass
    with pytest.raises(ValueError, match="not a decoder linear"):
        with ggml_mixed(model, {"lm_head": "Q8_0"}):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        with ggml_mixed(model, {names[0]: "Q4_0"}):
            raise RuntimeError("inside")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_recorded_allocations_are_what_the_allocator_chooses(smollm2_shaped):
    """benchmarks/results/gguf_mixture_h200.json's allocated mixtures follow from its own map by allocate_ggml."""
    import json
    from pathlib import Path

    record = json.loads((Path(__file__).parents[2] / "benchmarks" / "results" / "gguf_mixture_h200.json").read_text())
    damage: dict = {}
    for r in record["rows"]:
        damage.setdefault(r["layer"], {})[r["type"]] = r["kl"]
    shapes = linear_shapes(smollm2_shaped)
    choices = [t for t in GGML_TYPES if t not in record["settings"]["allocator_excludes"]]
    allocated = [r for r in record["results"] if r["kind"] == "allocated"]
    assert {r["file_type"] for r in allocated} == {"Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M"}
    for r in allocated:
        llama = next(x for x in record["results"] if x["kind"] == "llama.cpp" and x["name"] == r["file_type"])
        assert llama["types"] == file_type_types(smollm2_shaped, r["file_type"])
        alloc = allocate_ggml(damage, shapes, r["budget"], choices)
        assert {k: o.name for k, o in alloc.schemes.items()} == r["types"], r["file_type"]
        assert r["kl"] < llama["kl"] and r["megabytes"] <= llama["megabytes"]
