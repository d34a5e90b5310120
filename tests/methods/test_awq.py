"""AWQ's scale and clipping searches on a real SmolLM2 block, pinned against the reference.

``tests/fixtures/awq_reference.safetensors`` holds what mit-han-lab/llm-awq's own
``_search_module_scale`` and ``auto_clip_layer`` chose on block 3 of the course model
(commit, inputs and command in its metadata and in ``tests/fixtures/make_awq_reference.py``).
"""
import copy
import json
from pathlib import Path

import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.methods.awq import fold_scales_into_norm, pseudo_quantize_tensor, search_clip, search_scales


@pytest.fixture(scope="module")
def mlp_input(smollm2):
    model, tok = smollm2
    block = model.model.layers[6]
    seen = []
    # the residual stream entering the MLP's RMSNorm; the MLP itself reads norm(h)
    hook = block.post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(calibration_samples(tok, n_samples=2, seq_len=128, seed=0))
    hook.remove()
    return block, seen[0]


def test_pseudo_quantize_matches_formula():
    w = torch.tensor([[0.5, 1.0, 2.0, 3.5]])
    # step (3.5 - 0.5) / 3 = 1.0 from the unwidened range; zero-point -round(0.5) = 0 (half to even),
    # so the grid is {0, 1, 2, 3}: 0.5 rounds to 0 and 3.5 clips to 3
    q = pseudo_quantize_tensor(w, n_bits=2, group_size=4)
    assert torch.equal(q, torch.tensor([[0.0, 1.0, 2.0, 3.0]]))



def test_short_last_group_is_quantized_on_its_own():
    torch.manual_seed(0)
    w = torch.randn(4, 10)
    q = pseudo_quantize_tensor(w, n_bits=3, group_size=4)  # groups of 4, 4 and 2 columns
    parts = [pseudo_quantize_tensor(w[:, a:b].contiguous(), n_bits=3, group_size=b - a) for a, b in [(0, 4), (4, 8), (8, 10)]]
    assert torch.equal(q, torch.cat(parts, dim=1))
    with pytest.raises(ValueError, match="NaN or Inf"):
        pseudo_quantize_tensor(torch.tensor([[1.0, float("nan")]]), group_size=2)


def test_scale_search_beats_rtn_and_folding_is_exact(mlp_input):
    block, h = mlp_input
    block = copy.deepcopy(block)
    mlp = block.mlp
    with torch.no_grad():
        x = block.post_attention_layernorm(h)  # what gate/up read
        before = mlp(x)
    scales, ratio, history = search_scales(mlp, [mlp.gate_proj, mlp.up_proj], x, n_bits=3, group_size=64)
    assert len(history) == 20
    assert history[round(ratio * 20)] == min(history)  # the chosen α is the one with the least loss
    with torch.no_grad():
        assert torch.equal(mlp(x), before)  # the search restored the weights
    # fold into the norm that feeds the MLP: the float output must not change
    fold_scales_into_norm(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], scales)
    with torch.no_grad():
        after = mlp(block.post_attention_layernorm(h))
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)


def test_clip_search_reduces_output_error(mlp_input):
    block, _ = mlp_input
    w = block.mlp.down_proj.weight.detach()
    h = torch.randn(256, w.shape[1]).abs()  # stand-in inputs for down_proj
    max_val = search_clip(w, h, n_bits=3, group_size=64)
    assert max_val.shape == (w.shape[0], w.shape[1] // 64, 1)
    clipped = torch.clamp(w.reshape(w.shape[0], -1, 64), -max_val, max_val).reshape(w.shape)
    err_clip = ((h @ w.T - h @ pseudo_quantize_tensor(clipped, 3, 64).T) ** 2).mean()
    err_rtn = ((h @ w.T - h @ pseudo_quantize_tensor(w, 3, 64).T) ** 2).mean()
    assert err_clip <= err_rtn


# --- pinned against the reference ------------------------------------------------------

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "awq_reference.safetensors"
# Scales: float32, the same formula on the same inputs; rtol 1e-5 leaves room for a
# different order of the mean's sum on another BLAS, and nothing else.
SCALE_RTOL = 1e-5


@pytest.fixture(scope="module")
def awq_reference():
    from safetensors import safe_open

    with safe_open(FIXTURE, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k in ("x_attn", "x_mlp"):
        tensors[k] = tensors[k].float()  # stored as float16; both sides ran on these values
    return tensors, json.loads(meta["setup"]), json.loads(meta["ratios"])


def _searches(block, ref, setup):
    attn, mlp = block.self_attn, block.mlp
    rope = (ref["cos"], ref["sin"])
    return {
        "qkv": (lambda h: attn(hidden_states=h, position_embeddings=rope), [attn.q_proj, attn.k_proj, attn.v_proj],
                ref["x_attn"]),
        "gate_up": (mlp, [mlp.gate_proj, mlp.up_proj], ref["x_mlp"]),
    }


@pytest.mark.parametrize("group", ["qkv", "gate_up"])
def test_scale_search_equals_reference(smollm2, awq_reference, group):
    model, _ = smollm2
    ref, setup, ratios = awq_reference
    block = model.model.layers[setup["block"]]
    module, linears, x = _searches(block, ref, setup)[group]
    scales, ratio, history = search_scales(module, linears, x, n_bits=setup["n_bits"],
                                           group_size=setup["group_size"], n_grid=setup["n_grid"])
    assert ratio == ratios[group] and ratio > 0  # a nonzero α: plain round-to-nearest would not pass
    torch.testing.assert_close(scales, ref[f"scales_{group}"], rtol=SCALE_RTOL, atol=0)


@pytest.mark.parametrize("name", ["self_attn.v_proj", "mlp.gate_proj"])
def test_clip_search_equals_reference(smollm2, awq_reference, name):
    model, _ = smollm2
    ref, setup, _ = awq_reference
    lin = model.model.layers[setup["block"]].get_submodule(name)
    x = ref["x_attn"] if name.startswith("self_attn") else ref["x_mlp"]
    max_val = search_clip(lin.weight.detach(), x, setup["n_bits"], setup["group_size"])
    expected = ref[f"clip_{name.split('.')[1]}"]
    assert max_val.shape == expected.shape
    # every max|w| is org_max * (1 - i/20): the same shrink step gives the same float32 value
    assert torch.equal(max_val, expected), f"{(max_val != expected).sum().item()} of {expected.numel()} groups differ"
