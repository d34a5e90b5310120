"""GGUF 32-weight block formats: byte-identical to gguf-py, and to llama.cpp's own file."""
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from qtutor.gguf import LEGACY_TYPES, dequantize_blocks, quantize_blocks, type_size
from qtutor.model import gguf_source_path

LAYERS = ["model.layers.3.mlp.up_proj", "model.layers.0.self_attn.k_proj", "model.layers.29.mlp.down_proj"]


@pytest.mark.parametrize("name", LEGACY_TYPES)
@pytest.mark.parametrize("layer", LAYERS)
def test_byte_identical_to_gguf_py(smollm2, layer, name):
    model, _ = smollm2
    w = model.get_submodule(layer).weight.detach().numpy()
    qtype = getattr(GGMLQuantizationType, name)
    ref = quants.quantize(w, qtype).reshape(-1)
    ours = quantize_blocks(w.reshape(-1, 32), name)
    assert ours.shape[1] == type_size(name) == quants.GGML_QUANT_SIZES[qtype][1]
    assert np.array_equal(ours.reshape(-1), ref)
    assert np.array_equal(dequantize_blocks(ours, name).reshape(w.shape), quants.dequantize(ref.reshape(w.shape[0], -1), qtype))


def test_reproduces_the_shipped_llama_cpp_file(smollm2):
    """Re-encoding the dequantized weights gives back the bytes llama.cpp wrote into the model's GGUF."""
    model, _ = smollm2
    reader = gguf.GGUFReader(gguf_source_path())
    tensors = {t.name: t for t in reader.tensors}
    # q/k rows are permuted between GGUF and Hugging Face layouts, so compare the unpermuted ones
    pairs = [("token_embd.weight", "model.embed_tokens")] + [
        (f"blk.{i}.{g}.weight", f"model.layers.{i}.{h}")
        for i in range(30)
        for g, h in (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"),
                     ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"))
    ]
    for gname, hname in pairs:
        t = tensors[gname]
        w = model.get_submodule(hname).weight.detach().numpy()
        ours = quantize_blocks(w.reshape(-1, 32), t.tensor_type.name)
        assert np.array_equal(ours.reshape(-1), np.asarray(t.data).reshape(-1)), gname


def test_all_zero_and_constant_blocks():
    x = np.zeros((2, 32), np.float32)
    x[1] = 0.5
    for name in LEGACY_TYPES:
        out = dequantize_blocks(quantize_blocks(x, name), name)
        assert np.isfinite(out).all() and np.all(out[0] == 0)
    assert np.all(dequantize_blocks(quantize_blocks(x, "Q4_1"), "Q4_1")[1] == 0.5)


def test_bad_input():
    with pytest.raises(ValueError, match="not one of"):
        quantize_blocks(np.zeros((1, 32)), "Q3_0")
    with pytest.raises(ValueError, match=r"shape \(n_blocks, 32\)"):
        quantize_blocks(np.zeros((1, 33)), "Q8_0")
    with pytest.raises(ValueError, match=r"shape \(n, 18\)"):
        dequantize_blocks(np.zeros((1, 17), np.uint8), "Q4_0")
