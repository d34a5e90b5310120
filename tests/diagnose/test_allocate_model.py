"""On the real model (cheap setting): the proxy-allocated mixed model beats the best uniform scheme at ≤ equal size.

RTN everywhere; the damage the allocator minimises is the activation-weighted weight error
(``Σ_j E[x_j²]·‖ΔW_{:,j}‖²``) from 2 × 128 calibration tokens; quality is measured on held-out
WikiText-2 test windows (perplexity and KL vs the float model). The uniform schemes compared are the two
best by the same proxy among those that fit the budget; the mixed model must beat the better of them on
perplexity and, separately, the better of them on KL.
"""
import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.diagnose.allocate import ALL_SCHEMES, allocate, damage_from_frame, linear_shapes, uniform_options
from qtutor.diagnose.sensitivity import activation_sq_means, proxy_table
from qtutor.eval import EvalConfig, logit_agreement, perplexity, reference_logits
from qtutor.model.walk import decoder_linears
from qtutor.primitives.grid import rtn_grid_quantize

EVAL = EvalConfig(ctx=256, n_windows=2)
BUDGETS = (3.0, 3.5, 4.25)


def _quality(model, tok, ref, schemes):
    linears = decoder_linears(model)
    saved = {n: m.weight.detach().clone() for n, m in linears.items()}
    try:
        with torch.no_grad():
            for n, s in schemes.items():
                linears[n].weight.copy_(rtn_grid_quantize(saved[n], s.n_bits, s.group_size).dequantize())
        return perplexity(model, tok, EVAL), logit_agreement(model, ref)["kl"]
    finally:
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(saved[n])


@pytest.fixture(scope="module")
def setting(smollm2):
    model, tok = smollm2
    calib = calibration_samples(tok, n_samples=2, seq_len=128, seed=0)
    x_sq = activation_sq_means(model, calib)
    table = proxy_table(model, x_sq, [(s.n_bits, s.group_size) for s in ALL_SCHEMES], show_progress=False)
    return model, tok, reference_logits(model, tok, EVAL), damage_from_frame(table, "proxy_activation")


# Measured on 2026-12-01 (2 CPU threads of the H200 host, torch 2.11): at 3.0 bpw the mixed model wins (every uniform
# scheme that fits is 2-bit); at 3.5 and 4.25 the activation-weighted proxy allocation LOSES to uniform RTN
# (3.5: ppl 217.6 / KL 2.274 vs W3 g64 99.8 / 1.461; 4.25: 77.4 / 1.238 vs W4 g128 36.6 / 0.440). The GPU map
# (benchmarks/results/sensitivity_h200.json) shows why: this proxy ranks layers almost unrelated to their
# measured KL (Spearman 0.05 at RTN 3 bits; plain weight error 0.38). Kept strict, as the record of a real finding:
# allocating by the *measured* map does beat uniform at all three budgets (tests/diagnose/test_allocate_measured.py).
_PROXY_LOSES = pytest.mark.xfail(strict=True, reason="activation-weighted proxy allocation loses to uniform (measured)")
BUDGET_CASES = [3.0, pytest.param(3.5, marks=_PROXY_LOSES), pytest.param(4.25, marks=_PROXY_LOSES)]


@pytest.mark.parametrize("budget", BUDGET_CASES)
def test_allocation_beats_uniform(setting, budget):
    model, tok, ref, damage = setting
    shapes = linear_shapes(model)
    alloc = allocate(damage, shapes, budget)
    assert alloc.bits_per_weight <= budget
    mixed_ppl, mixed_kl = _quality(model, tok, ref, alloc.schemes)
    uniform = uniform_options(budget, shapes, damage).head(2)  # the two best by the proxy
    results = [_quality(model, tok, ref, dict.fromkeys(shapes, s))
               for s in (next(x for x in ALL_SCHEMES if x.label == label) for label in uniform["scheme"])]
    best_ppl, best_kl = min(r[0] for r in results), min(r[1] for r in results)
    assert mixed_ppl < best_ppl and mixed_kl < best_kl, (
        f"budget {budget}: allocated ({alloc.bits_per_weight:.3f} bpw) ppl {mixed_ppl:.3f}, KL {mixed_kl:.4f}; "
        f"uniform {list(uniform['scheme'])} ppl {best_ppl:.3f}, KL {best_kl:.4f}")
