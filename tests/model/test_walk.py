import torch

from qtutor.methods import rtn_quantize_fn
from qtutor.model import decoder_linears, fake_quantized
from qtutor.primitives import PerChannel, QuantSpec


def test_decoder_linears_excludes_embeddings_and_head(smollm2):
    model, _ = smollm2
    names = decoder_linears(model)
    assert len(names) == 30 * 7
    assert "model.layers.0.self_attn.q_proj" in names and not any("lm_head" in n for n in names)


def test_fake_quantized_changes_then_restores(smollm2):
    model, _ = smollm2
    lin = model.model.layers[4].mlp.gate_proj
    before = lin.weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    with fake_quantized(model, rtn_quantize_fn(QuantSpec(n_bits=4, granularity=PerChannel(0)))):
        assert not torch.equal(lin.weight, before)
        assert len(torch.unique(lin.weight[0])) <= 15
        assert torch.equal(model.lm_head.weight, head)
    assert torch.equal(lin.weight, before)


def test_fake_quantized_restores_after_error(smollm2):
    model, _ = smollm2
    before = model.model.layers[0].self_attn.v_proj.weight.detach().clone()
    try:
        with fake_quantized(model, lambda w: w * 0):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.equal(model.model.layers[0].self_attn.v_proj.weight, before)
