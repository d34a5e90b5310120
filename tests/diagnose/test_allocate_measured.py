"""Allocated by measured sensitivity beats uniform at equal size: 3.0, 3.5 and 4.25 bits per weight, on the real model.

The damage is the recorded GPU map (``benchmarks/results/mixed_precision_h200.json``): KL of each
decoder linear quantized alone (RTN) in each of the 16 schemes, measured on held-out WikiText-2 *train*
text. The allocator is rerun here from that map (it is deterministic: it must give the recorded
allocation), and the mixed model and the uniform schemes are scored live on the CPU on WikiText-2
*test* windows (a cheap setting: 4 × 256 tokens). The uniform schemes compared are the two with the
most bits per weight that fit the budget; the record's full-test-set table shows the one with the most
bits is the best uniform scheme at every budget (asserted below), so beating both is beating uniform.
"""
import json
from pathlib import Path

import pandas as pd
import pytest

import qtutor
from qtutor.diagnose.allocate import (allocate, damage_from_frame, linear_shapes, rtn_mixed, scheme_from_label,
                                      uniform_options)
from qtutor.eval import EvalConfig, logit_agreement, perplexity, reference_logits

RECORD = Path(qtutor.__file__).parents[1] / "benchmarks" / "results" / "mixed_precision_h200.json"
EVAL = EvalConfig(ctx=256, n_windows=4)


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


@pytest.fixture(scope="module")
def damage(record):
    return damage_from_frame(pd.DataFrame(record["rows"]), "kl")


@pytest.fixture(scope="module")
def live(smollm2):
    model, tok = smollm2
    return model, tok, reference_logits(model, tok, EVAL)


def _quality(model, tok, ref, schemes):
    with rtn_mixed(model, schemes):
        return perplexity(model, tok, EVAL), logit_agreement(model, ref)["kl"]


def test_record_covers_every_layer_and_scheme(record, damage):
    assert len(damage) == 210 and all(len(d) == 16 for d in damage.values())
    assert all(r["kl"] >= 0 for r in record["rows"])
    assert "heldout=True" in record["settings"]["map"] and record["device"] and record["versions"]["torch"]


@pytest.mark.parametrize("budget", [3.0, 3.5, 4.25])
def test_recorded_front_best_uniform_is_the_largest_that_fits(record, budget):
    uniform = [r for r in record["pareto"] if r["kind"] == "uniform" and r["bits_per_weight"] <= budget]
    largest = max(uniform, key=lambda r: r["bits_per_weight"])
    assert min(uniform, key=lambda r: r["perplexity"]) is largest and min(uniform, key=lambda r: r["kl"]) is largest
    mixed = next(r for r in record["pareto"] if r["kind"] == "allocated" and r["budget"] == budget)
    assert mixed["perplexity"] < largest["perplexity"] and mixed["kl"] < largest["kl"]  # on all 589 test windows


@pytest.mark.parametrize("budget", [3.0, 3.5, 4.25])
def test_measured_allocation_beats_uniform(record, damage, live, budget):
    model, tok, ref = live
    shapes = linear_shapes(model)
    assert set(shapes) == set(damage)
    alloc = allocate(damage, shapes, budget)
    assert alloc.bits_per_weight <= budget
    recorded = next(r for r in record["pareto"] if r["kind"] == "allocated" and r["budget"] == budget)
    assert {n: s.label for n, s in alloc.schemes.items()} == recorded["schemes"]
    mixed_ppl, mixed_kl = _quality(model, tok, ref, alloc.schemes)
    fits = uniform_options(budget, shapes)  # most bits per weight first
    results = {label: _quality(model, tok, ref, dict.fromkeys(shapes, scheme_from_label(label)))
               for label in fits["scheme"].head(2)}
    best_ppl, best_kl = min(r[0] for r in results.values()), min(r[1] for r in results.values())
    assert mixed_ppl < best_ppl and mixed_kl < best_kl, (
        f"budget {budget}: allocated ({alloc.bits_per_weight:.3f} bpw) ppl {mixed_ppl:.3f}, KL {mixed_kl:.4f}; "
        f"uniform {results}")
