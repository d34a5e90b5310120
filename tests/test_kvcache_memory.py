"""KV-cache memory math: per-token bytes from the architecture, quantized formats' metadata, the crossover."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtutor.kvcache import FP16, MODEL_SHAPES, KVFormat, ModelShape, cache_bytes, crossover_context, \
    kv_bytes_per_token, weight_bytes


def test_llama3_8b_fp16_is_128_kib_per_token():
    # 2 (K, V) × 32 layers × 8 KV heads × 128 dims × 2 bytes
    assert kv_bytes_per_token(MODEL_SHAPES["Llama-3-8B"]) == 131072
    assert cache_bytes(MODEL_SHAPES["Llama-3-8B"], 128 * 1024) == 16 * 2**30  # 16 GiB at 128k


def test_smollm2_from_its_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    shape = ModelShape.from_config(cfg, n_params=134_515_008, name="SmolLM2-135M")
    assert (shape.head_dim, shape.n_kv_heads) == (64, 3)
    assert kv_bytes_per_token(shape) == 2 * 30 * 3 * 64 * 2


def test_quantized_formats_count_scale_and_zero_point():
    shape = MODEL_SHAPES["Llama-3-8B"]
    int4 = KVFormat("int4 g32", 4, 32)
    assert int4.bits_per_element == 5.0
    assert kv_bytes_per_token(shape, int4) == kv_bytes_per_token(shape) * 5 / 16
    assert KVFormat("fp8", 8).bits_per_element == 8


def test_crossover_is_the_first_context_where_the_cache_is_larger():
    shape = MODEL_SHAPES["Llama-3-8B"]
    n = crossover_context(shape, 16)
    assert cache_bytes(shape, n) > weight_bytes(shape, 16) >= cache_bytes(shape, n - 1)
    assert crossover_context(shape, 4.5) < n  # 4-bit weights: the cache passes them sooner
    assert crossover_context(shape, 16, batch=8) == pytest.approx(n / 8, abs=1)


@given(st.sampled_from([2, 4, 8]), st.sampled_from([None, 16, 32, 64, 128]), st.integers(1, 1 << 20))
def test_cache_scales_linearly(bits, group, context):
    fmt = KVFormat("q", bits, group)
    shape = MODEL_SHAPES["Llama-3-70B"]
    assert cache_bytes(shape, context, fmt) == pytest.approx(context * kv_bytes_per_token(shape, fmt))
    assert kv_bytes_per_token(shape, fmt) < kv_bytes_per_token(shape, FP16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="x", bits=3), "bits=3"), (dict(name="x", bits=4, group_size=0), "group_size=0"),
    (dict(name="x", bits=16, group_size=32), "no groups"), (dict(name="x", bits=True), "bits=True"),
])
def test_bad_format(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KVFormat(**kwargs)


def test_bad_shape_and_arguments():
    with pytest.raises(ValueError, match="n_kv_heads=4 must divide n_heads=9"):
        ModelShape("m", 30, 9, 4, 64, 1000)
    with pytest.raises(ValueError, match="n_layers=0"):
        ModelShape("m", 0, 9, 3, 64, 1000)
    shape = MODEL_SHAPES["Llama-3-8B"]
    with pytest.raises(ValueError, match="context=-1"):
        cache_bytes(shape, -1)
    with pytest.raises(ValueError, match="batch=0"):
        crossover_context(shape, 16, batch=0)
    with pytest.raises(ValueError, match="bits_per_weight=nan"):
        weight_bytes(shape, float("nan"))
