"""QuaRot: the rotated float model computes the same function; every refusal leaves the model untouched."""
import copy

import pytest
import torch

from qtutor.methods.hadamard import hadamard_matrix
from qtutor.methods.quarot import (
    add_online_hadamard_, fold_norms_, online_hadamard_layers, quarot_, rotate_residual_,
)


def _randomize_norms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def normed_llama(make_tiny_llama):
    m = make_tiny_llama()
    _randomize_norms(m)
    return m


def test_each_step_preserves_the_function(normed_llama, tiny_ids):
    ref = normed_llama(tiny_ids).logits
    fold_norms_(normed_llama)
    assert not normed_llama.config.tie_word_embeddings
    assert torch.allclose(normed_llama(tiny_ids).logits, ref, atol=1e-5)
    rotate_residual_(normed_llama, hadamard_matrix(64))
    assert torch.allclose(normed_llama(tiny_ids).logits, ref, atol=1e-5)
    add_online_hadamard_(normed_llama)
    assert torch.allclose(normed_llama(tiny_ids).logits, ref, atol=1e-5)
    assert len(online_hadamard_layers(normed_llama)) == 4  # o_proj and down_proj of 2 blocks


def test_quarot_preserves_function_and_flattens_the_residual(normed_llama, tiny_ids):
    ref = normed_llama(tiny_ids).logits
    quarot_(normed_llama, seed=1)
    assert torch.allclose(normed_llama(tiny_ids).logits, ref, atol=1e-5)


def test_seed_changes_the_rotation_not_the_function(make_tiny_llama, tiny_ids):
    a, b = make_tiny_llama(), make_tiny_llama()
    quarot_(a, seed=0)
    quarot_(b, seed=1)
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert torch.allclose(a(tiny_ids).logits, b(tiny_ids).logits, atol=1e-5)


def test_rotating_twice_is_refused_and_changes_nothing(normed_llama):
    quarot_(normed_llama)
    before = _state(normed_llama)
    with pytest.raises(ValueError, match="already"):
        quarot_(normed_llama)
    after = _state(normed_llama)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unreachable_width_is_refused_before_any_change(make_tiny_llama):
    m = make_tiny_llama(intermediate_size=36)  # down_proj reads 36 features: no order-36 matrix is built here
    before = _state(m)
    with pytest.raises(ValueError, match="n=36"):
        quarot_(m)
    after = _state(m)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.config.tie_word_embeddings


def test_nan_weight_is_refused_before_any_change(normed_llama):
    with torch.no_grad():
        normed_llama.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    before = _state(normed_llama)
    with pytest.raises(ValueError, match="up_proj.*NaN"):
        quarot_(normed_llama)
    after = _state(normed_llama)
    assert all(torch.equal(before[k], after[k], ) or k.endswith("up_proj.weight") for k in before)
    assert torch.equal(before["model.layers.0.input_layernorm.weight"], after["model.layers.0.input_layernorm.weight"])


def test_rotate_residual_refusals(normed_llama):
    with pytest.raises(ValueError, match="fold_norms_"):
        rotate_residual_(normed_llama, hadamard_matrix(64))
    fold_norms_(normed_llama)
    with pytest.raises(ValueError, match="shape"):
        rotate_residual_(normed_llama, hadamard_matrix(32))
    with pytest.raises(ValueError, match="orthogonal"):
        rotate_residual_(normed_llama, 2 * hadamard_matrix(64))


def test_not_a_llama_is_refused():
    with pytest.raises(ValueError, match="Llama-family"):
        quarot_(torch.nn.Linear(4, 4))


def test_real_model_rotation_preserves_logits(smollm2):
    model, tok = smollm2
    rotated = copy.deepcopy(model)
    quarot_(rotated, seed=0)
    ids = tok("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    with torch.no_grad():
        ref, got = model(ids).logits, rotated(ids).logits
    assert (ref - got).abs().max() < 2e-3 * ref.abs().max()
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert len(online_hadamard_layers(rotated)) == 2 * len(rotated.model.layers)
