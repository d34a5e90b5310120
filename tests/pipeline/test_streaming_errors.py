"""Streaming from a file: a bad block is blamed by name, and nothing half-quantized is handed to ``on_done``."""
import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from qtutor.methods.gptq import GPTQConfig
from qtutor.pipeline import SafetensorsBlocks, gptq_quantize_model


def _tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_a_nan_in_a_streamed_block_stops_before_it_is_written(tmp_path):
    model = _tiny()
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items() if k.startswith("model.layers.")}
    state["model.layers.2.mlp.up_proj.weight"][0, 0] = float("nan")
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    for block in model.model.layers:
        block.to("meta")
    done = []
    blocks = SafetensorsBlocks(model, path, "cpu", on_done=lambda i, b: done.append(i))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.up_proj\.weight: the weights contain NaN or Inf"):
        gptq_quantize_model(model, ids, GPTQConfig(group_size=16), batch_size=2, blocks=blocks, progress=False)
    assert done == [0, 1]  # block 2 never reached on_done
    assert all(p.is_meta for p in model.model.layers.parameters())  # and went back to meta
