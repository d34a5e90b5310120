"""The block-by-block machinery: captured block inputs, early-stopping collection, streaming from disk."""
import copy

import pytest
import torch
from safetensors.torch import save_file

from qtutor.methods.gptq import GPTQConfig
from qtutor.pipeline import (
    SafetensorsBlocks, capture_block_inputs, collect_linear_inputs, gptq_quantize_model, run_block,
)


def test_block_chain_reproduces_the_model(small_model, calib):
    model, _ = small_model
    with torch.no_grad():
        hidden = model(calib, output_hidden_states=True).hidden_states  # input of block i at [i]
    inputs = capture_block_inputs(model, calib, batch_size=3)  # 3 does not divide 4: ragged batches
    assert torch.equal(inputs.hidden, hidden[0])
    for i in range(2):
        inputs.hidden = run_block(model.model.layers[i], inputs)
        torch.testing.assert_close(inputs.hidden, hidden[i + 1], rtol=1e-5, atol=1e-5)


def test_collection_stops_early_and_sees_every_batch(small_model, calib):
    model, _ = small_model
    block = model.model.layers[1]
    inputs = capture_block_inputs(model, calib, batch_size=2)
    full = []
    hook = block.self_attn.k_proj.register_forward_pre_hook(lambda m, a: full.append(a[0]))
    run_block(block, inputs)
    hook.remove()
    seen, mlp_calls = [], []
    hook = block.mlp.register_forward_pre_hook(lambda m, a: mlp_calls.append(1))
    collect_linear_inputs(block, inputs, ["self_attn.q_proj", "self_attn.k_proj"], lambda n, x: seen.append((n, x)))
    hook.remove()
    assert [n for n, _ in seen] == ["self_attn.q_proj", "self_attn.k_proj"] * 2
    assert torch.equal(torch.cat([x for n, x in seen if n.endswith("k_proj")]), torch.cat(full))
    assert mlp_calls == []  # the forward stopped before the MLP


def test_bad_calibration_ids(small_model):
    with pytest.raises(ValueError, match="int64"):
        capture_block_inputs(small_model[0], torch.zeros(2, 8, dtype=torch.int32))


def test_gptq_model_is_deterministic_and_writes_its_grid(small_model, calib):
    cfg = GPTQConfig(n_bits=4, group_size=128, act_order=True)
    outs = []
    for _ in range(2):
        model = copy.deepcopy(small_model[0])
        res = gptq_quantize_model(model, calib, cfg, batch_size=2, progress=False)
        outs.append(res)
        assert len(res) == 3 * 7
        for name, qw in res.items():
            assert torch.equal(model.get_submodule(name).weight, qw.dequantize())
    assert all(torch.equal(outs[0][n].q, outs[1][n].q) and torch.equal(outs[0][n].scale, outs[1][n].scale) for n in outs[0])


def test_streaming_from_safetensors_equals_in_memory(small_model, calib, tmp_path):
    model, _ = small_model
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("model.layers.")}, str(path))
    cfg = GPTQConfig(n_bits=3, group_size=64)
    expected = gptq_quantize_model(copy.deepcopy(model), calib, cfg, batch_size=2, progress=False)

    streamed = copy.deepcopy(model)
    for block in streamed.model.layers:
        block.to("meta")  # the blocks hold no memory until their turn
    written = {}
    blocks = SafetensorsBlocks(streamed, path, "cpu",
                               on_done=lambda i, b: written.update({i: [p.is_meta for p in b.parameters()]}))
    got = gptq_quantize_model(streamed, calib, cfg, batch_size=2, blocks=blocks, progress=False)
    assert blocks.loaded == [0, 1, 2]
    assert all(not any(v) for v in written.values())  # materialised while being quantized
    assert all(p.is_meta for p in streamed.model.layers.parameters())  # and freed afterwards
    for name in expected:
        assert torch.equal(got[name].q, expected[name].q), name
        assert torch.equal(got[name].scale, expected[name].scale), name


def test_streaming_reports_a_missing_block(small_model, calib, tmp_path):
    model = copy.deepcopy(small_model[0])
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("model.layers.0.")}, str(path))
    with pytest.raises(KeyError, match="no tensors for block 1"):
        gptq_quantize_model(model, calib, GPTQConfig(), blocks=SafetensorsBlocks(model, path, "cpu"), progress=False)
    with pytest.raises(FileNotFoundError, match="no such safetensors file"):
        SafetensorsBlocks(model, tmp_path / "absent.safetensors", "cpu")
