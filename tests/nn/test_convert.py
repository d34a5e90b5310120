"""convert(model, config) on a tiny random Llama: every config gives its module and a close model; errors
leave the model exactly as it was."""
import copy

import pytest
import torch

import qtutor
from qtutor.config import (
    AWQConfig, FP8Config, GPTQConfig, LLMInt8Config, NF4Config, RTNConfig, W8A8Config,
)
from qtutor.model import decoder_linears
from qtutor.nn import MODULES, convert
from qtutor.pipeline import awq_quantize_model, gptq_quantize_model

# relative logit error of each converted model vs float: loose bounds that a wrong module would miss
CONFIGS = [
    (RTNConfig(4, 32), 0.2),
    (RTNConfig(8, None, symmetric=True), 0.02),
    (NF4Config(), 0.2),
    (LLMInt8Config(), 0.05),
    (W8A8Config(), 0.05),
    (FP8Config(), 0.1),
]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _same(model, snap):
    state, types = snap
    now = model.state_dict()
    assert [type(m) for m in model.modules()] == types
    assert now.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(now[k], state[k], rtol=0, atol=0, equal_nan=True)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("config, tol", CONFIGS, ids=lambda c: repr(c) if not isinstance(c, float) else "")
def test_convert_each_config(tiny_llama, tiny_ids, config, tol):
    with torch.no_grad():
        want = tiny_llama(tiny_ids).logits
        model = convert(copy.deepcopy(tiny_llama), config)
        got = model(tiny_ids).logits
    blocks = [m for b in model.model.layers for m in b.modules() if type(m) in MODULES.values()]
    assert len(blocks) == 14 and all(isinstance(m, MODULES[type(config)]) for m in blocks)
    assert _rel(got, want) < tol


@pytest.mark.parametrize("config", [GPTQConfig(4, 32), GPTQConfig(4, 32, act_order=True), AWQConfig(4, 32, n_grid=4)],
                         ids=["gptq", "gptq-act-order", "awq"])
def test_convert_after_the_pipeline(tiny_llama, tiny_ids, config):
    """Two phases: the pipeline quantizes in place (AWQ also folds scales into the norms), convert packs."""
    with torch.no_grad():
        tiny_llama.model.embed_tokens.weight[:, 3] *= 30  # an outlier channel, so that AWQ scales (α > 0)
    calib = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    run = gptq_quantize_model if isinstance(config, GPTQConfig) else lambda *a, **k: awq_quantize_model(*a, **k)[0]
    results = run(tiny_llama, calib, config, batch_size=2)  # tiny_llama now holds the dequantized weights
    with torch.no_grad():
        want = tiny_llama(tiny_ids).logits
        got = convert(tiny_llama, config, results=results)(tiny_ids).logits
    assert _rel(got, want) < 1e-2  # fp16 scales in the packed layers: the only difference


def test_public_entry_point():
    assert qtutor.convert is convert


@pytest.mark.parametrize("call, match", [
    (lambda m: convert(m, "gptq"), r"config='gptq': convert takes one of RTNConfig"),
    (lambda m: convert(m, RTNConfig(3, 32)), r"n_bits=3: W4A16Linear packs \(2, 4, 8\)"),
    (lambda m: convert(m, GPTQConfig(4, 32)), r"GPTQConfig needs results="),
    (lambda m: convert(m, NF4Config(), results={}), r"results= is for GPTQConfig and AWQConfig"),
    (lambda m: convert(m, W8A8Config({"model.layers.0.self_attn.q_proj": 0.1})), r"no calibrated activation scale"),
    (lambda m: convert(m, GPTQConfig(4, 32), results={}), r"no quantized weight for 14 decoder linears"),
], ids=["string", "3-bit", "gptq-no-data", "data-not-needed", "missing-scale", "empty-results"])
def test_errors_leave_the_model_untouched(tiny_llama, call, match):
    snap = _snapshot(tiny_llama)
    with pytest.raises(ValueError, match=match):
        call(tiny_llama)
    _same(tiny_llama, snap)


def test_a_layer_that_fails_midway_leaves_the_model_untouched(tiny_llama):
    """The last layer's weight cannot be quantized (NaN): the 13 before it must not have been swapped."""
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    snap = _snapshot(tiny_llama)
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.down_proj: .*NaN"):
        convert(tiny_llama, FP8Config())
    _same(tiny_llama, snap)


def test_mismatched_results_are_named(tiny_llama):
    config = GPTQConfig(4, 32)
    from qtutor.primitives import rtn_grid_quantize

    results = {n: rtn_grid_quantize(m.weight.detach(), 4, 32) for n, m in decoder_linears(tiny_llama).items()}
    results["model.layers.0.mlp.up_proj"] = rtn_grid_quantize(torch.randn(8, 64), 4, 32)
    snap = _snapshot(tiny_llama)
    with pytest.raises(ValueError, match=r"results\['model.layers.0.mlp.up_proj'\] has shape \(8, 64\)"):
        convert(tiny_llama, config, results=results)
    _same(tiny_llama, snap)


def test_converting_twice_is_refused(tiny_llama):
    convert(tiny_llama, RTNConfig(4, 32))
    with pytest.raises(ValueError, match="converted already"):
        convert(tiny_llama, RTNConfig(4, 32))
