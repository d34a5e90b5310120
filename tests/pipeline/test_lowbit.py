"""qtutor.pipeline.lowbit on a tiny random Llama: transforms keep the function, every format runs, bad input is named."""
import pytest
import torch
import torch.nn.functional as F

from qtutor.eval import ReferenceLogits
from qtutor.model import decoder_linears
from qtutor.pipeline.lowbit import (
    ACT_FORMATS, WEIGHT_FORMATS, quantize_weights_, score, transformed_copy, weight_bits,
)


def _ref(model, ids):
    with torch.no_grad():
        return ReferenceLogits(ids, F.log_softmax(model(ids).logits, dim=-1))


def test_transforms_keep_the_float_function(tiny_llama, tiny_ids):
    ref = _ref(tiny_llama, tiny_ids)
    for t in ("none", "smoothquant", "quarot"):
        m = transformed_copy(tiny_llama, t, calib=tiny_ids)
        r = score(m, ref)
        assert r["kl"] < 1e-6 and r["top1"] == 1.0, t
    assert not any(p is q for p, q in zip(m.parameters(), tiny_llama.parameters()))


@pytest.mark.parametrize("fmt", sorted(WEIGHT_FORMATS))
def test_every_weight_format_quantizes_in_place(tiny_llama, fmt):
    before = {n: l.weight.detach().clone() for n, l in decoder_linears(tiny_llama).items()}
    quantize_weights_(tiny_llama, fmt)
    after = {n: l.weight.detach() for n, l in decoder_linears(tiny_llama).items()}
    assert all(torch.isfinite(after[n]).all() for n in after)
    assert any(not torch.equal(before[n], after[n]) for n in after)
    assert 4 <= weight_bits(fmt, 128, 64) <= 9


@pytest.mark.parametrize("act", sorted(ACT_FORMATS))
def test_every_activation_format_scores(tiny_llama, tiny_ids, act):
    r = score(tiny_llama, _ref(tiny_llama, tiny_ids), act)
    assert r["kl"] >= 0 and 0 <= r["top1"] <= 1 and r["perplexity"] > 1


def test_gptq_path(tiny_llama, tiny_ids):
    quantize_weights_(tiny_llama, "int4", "gptq", calib=tiny_ids)
    w = next(iter(decoder_linears(tiny_llama).values())).weight
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("call, match", [
    (lambda m, ids: transformed_copy(m, "spinquant"), "transform='spinquant'"),
    (lambda m, ids: transformed_copy(m, "smoothquant"), "needs calib"),
    (lambda m, ids: quantize_weights_(m, "int3"), "fmt='int3'"),
    (lambda m, ids: quantize_weights_(m, "int4", "awq"), "method='awq'"),
    (lambda m, ids: quantize_weights_(m, "nf4", "gptq", calib=ids), "only 'int4'"),
    (lambda m, ids: quantize_weights_(m, "int4", "gptq"), "needs calib"),
    (lambda m, ids: score(m, _ref(m, ids), "int2"), "act='int2'"),
])
def test_bad_input_is_named(tiny_llama, tiny_ids, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_llama, tiny_ids)
