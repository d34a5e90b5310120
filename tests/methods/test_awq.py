"""AWQ's scale and clipping searches on a real SmolLM2 MLP."""
import copy

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
    assert len(history) == 20 and min(history) <= history[0]  # ratio 0 is plain round-to-nearest
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
