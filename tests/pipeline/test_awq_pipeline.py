"""AWQ over whole blocks: the folded float model is unchanged, quantization beats RTN, results are deterministic."""
import copy

import torch

from qtutor.primitives import rtn_grid_quantize
from qtutor.model import fake_quantized
from qtutor.pipeline import AWQConfig, awq_quantize_model, capture_block_inputs, run_block
from qtutor.pipeline.awq import awq_search_and_fold


def test_folded_block_equals_the_float_block(small_model, calib):
    model = copy.deepcopy(small_model[0])
    inputs = capture_block_inputs(model, calib, batch_size=2)
    block = model.model.layers[0]
    before = run_block(block, inputs)
    q_before = block.self_attn.q_proj.weight.clone()
    alphas = awq_search_and_fold(block, inputs, AWQConfig(n_bits=3, group_size=64, clip=False))
    assert set(alphas) == {"self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"}  # v -> o skipped: GQA
    assert not torch.equal(block.self_attn.q_proj.weight, q_before)  # the scales did move into the weights
    torch.testing.assert_close(run_block(block, inputs), before, rtol=1e-4, atol=1e-4)


def _logit_error(model, ref, ids):
    with torch.no_grad():
        return (model(ids).logits - ref).pow(2).mean().item()


def test_awq_beats_rtn_and_is_deterministic(small_model, calib):
    model = small_model[0]
    with torch.no_grad():
        ref = model(calib).logits
    cfg = AWQConfig(n_bits=3, group_size=64)
    runs = []
    for _ in range(2):
        m = copy.deepcopy(model)
        res, _ = awq_quantize_model(m, calib, cfg, batch_size=2, progress=False)
        runs.append((m, res))
    assert all(torch.equal(runs[0][1][n].q, runs[1][1][n].q) for n in runs[0][1])
    rtn = copy.deepcopy(model)
    with fake_quantized(rtn, lambda w: rtn_grid_quantize(w, 3, 64).dequantize()):
        err_rtn = _logit_error(rtn, ref, calib)
    assert _logit_error(runs[0][0], ref, calib) < err_rtn
