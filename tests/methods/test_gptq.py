"""GPTQ against the reference implementation and round-to-nearest on the same grid, and its bookkeeping.

``tests/fixtures/gptq_reference.safetensors`` holds IST-DASLab/gptq's own
``GPTQ.fasterquant`` result on a real SmolLM2 layer (its weight and Hessian are in the
file; commit and command in its metadata and in ``tests/fixtures/make_gptq_reference.py``).
"""
import json
from pathlib import Path

import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.methods.gptq import GPTQ, GPTQConfig, gptq_fake_quant, gptq_grid_params

CONFIGS = {
    "w4-g64": GPTQConfig(n_bits=4, group_size=64),
    "w4-channel": GPTQConfig(n_bits=4, group_size=None),
    "w3-g64-sym": GPTQConfig(n_bits=3, group_size=64, symmetric=True),
    "w4-g64-actorder": GPTQConfig(n_bits=4, group_size=64, act_order=True),
    "w4-g64-actorder-static": GPTQConfig(n_bits=4, group_size=64, act_order=True, static_groups=True),
}


def _rtn(w, cfg):
    gs = cfg.group_size or w.shape[1]
    out = torch.empty_like(w)
    for i in range(0, w.shape[1], gs):
        scale, zero = gptq_grid_params(w[:, i:i + gs], cfg.n_bits, cfg.symmetric)
        out[:, i:i + gs] = gptq_fake_quant(w[:, i:i + gs], scale, zero, cfg.n_bits)
    return out


_INPUTS: dict = {}


def _layer_inputs(model, tok, name, n=4, seq=128):
    if name not in _INPUTS:
        _INPUTS[name] = _capture(model, tok, name, n, seq)
    return _INPUTS[name]


def _capture(model, tok, name, n, seq):
    lin = model.get_submodule(name)
    xs = []
    hook = lin.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().reshape(-1, lin.in_features)))
    with torch.no_grad():
        for ids in calibration_samples(tok, n_samples=n, seq_len=seq, seed=0).split(1):
            model(ids)
    hook.remove()
    return lin, torch.cat(xs)


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("name", ["model.layers.3.self_attn.q_proj", "model.layers.10.mlp.down_proj"])
def test_gptq_error_at_most_rtn_on_real_layers(smollm2, name, cfg):
    model, tok = smollm2
    lin, x = _layer_inputs(model, tok, name)
    g = GPTQ(lin.weight, name)
    for chunk in x.split(128):
        g.add_batch(chunk)
    qw = g.quantize(cfg)
    w = lin.weight.detach()
    err_gptq = ((x @ w.T - x @ qw.dequantize().T) ** 2).sum()
    err_rtn = ((x @ w.T - x @ _rtn(w, cfg).T) ** 2).sum()
    assert err_gptq <= err_rtn
    assert qw.shape == w.shape and qw.g_idx.shape == (w.shape[1],)
    assert qw.has_act_order == (cfg.act_order and not cfg.static_groups)
    assert int(qw.q.max()) <= 2**cfg.n_bits - 1


def test_running_mean_hessian():
    torch.manual_seed(0)
    x = torch.randn(300, 16)
    g = GPTQ(torch.randn(8, 16))
    for chunk in x.split(70):
        g.add_batch(chunk)
    assert torch.allclose(g.H, 2 * x.T @ x / 300, atol=1e-5)


def test_dead_columns_are_zeroed():
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    x[:, 3] = 0
    g = GPTQ(torch.randn(8, 16))
    g.add_batch(x)
    assert torch.all(g.quantize(GPTQConfig(group_size=None)).dequantize()[:, 3] == 0)


def test_deterministic():
    torch.manual_seed(0)
    w, x = torch.randn(16, 64), torch.randn(256, 64)
    outs = []
    for _ in range(2):
        g = GPTQ(w)
        g.add_batch(x)
        outs.append(g.quantize(GPTQConfig(group_size=32, act_order=True)).dequantize())
    assert torch.equal(*outs)


def test_bad_input():
    with pytest.raises(ValueError, match="n_bits=9"):
        GPTQConfig(n_bits=9)
    g = GPTQ(torch.randn(4, 8), "blk.0.q")
    with pytest.raises(ValueError, match="blk.0.q: no calibration data"):
        g.quantize(GPTQConfig())
    with pytest.raises(ValueError, match="input has 5 features"):
        g.add_batch(torch.randn(3, 5))
    g.add_batch(torch.full((4, 8), float("nan")))
    with pytest.raises(ValueError, match="blk.0.q: the Hessian is not positive definite"):
        g.quantize(GPTQConfig(group_size=None))


# --- pinned against the reference ------------------------------------------------------

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gptq_reference.safetensors"


def _reference():
    from safetensors import safe_open

    with safe_open(FIXTURE, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["configs"])


_REF, _REF_CONFIGS = _reference()


@pytest.mark.parametrize("name", list(_REF_CONFIGS))
def test_equals_reference_bit_for_bit(name):
    """Codes, scales, zero-points, group index and dequantized weights equal the reference's exactly.

    Exact, not within a tolerance: the same float32 operations in the same order on one
    CPU thread (the reference was run with ``torch.set_num_threads(1)`` too); one code a
    grid step off anywhere fails.
    """
    c = _REF_CONFIGS[name]
    cfg = GPTQConfig(n_bits=c["bits"], group_size=None if c["groupsize"] == -1 else c["groupsize"],
                     symmetric=c["sym"], act_order=c["actorder"], static_groups=c["static_groups"],
                     blocksize=128, percdamp=0.01)
    g = GPTQ(_REF["W"].clone(), name)
    g.H, g.nsamples = _REF["H"].clone(), 2048  # the reference's Hessian of 2048 calibration tokens
    qw = g.quantize(cfg)
    q, scale, zero, g_idx = (_REF[f"{name}.{k}"] for k in ("q", "scale", "zero", "g_idx"))
    assert torch.equal(qw.g_idx.to(torch.int32), g_idx)
    assert torch.equal(qw.scale, scale)
    assert torch.equal(qw.zero.to(torch.uint8), zero)
    differ = (qw.q.to(torch.uint8) != q).sum().item()
    assert differ == 0, f"{differ} of {q.numel()} codes differ from the reference"
    expected = scale[:, g_idx.long()] * (q.float() - zero[:, g_idx.long()].float())  # the reference's Q
    assert torch.equal(qw.dequantize(), expected)
