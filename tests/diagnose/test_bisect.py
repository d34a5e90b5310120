"""The bisector finds exactly the planted layers, within k·⌈log2 n⌉ + k evaluations; bad input is refused."""
import math

import pytest
import torch
import torch.nn.functional as F

from qtutor.diagnose.bisect import (BAD, GOOD, Recipe, bisect_layers, choose_half, plant_regression,
                                    recipe_weights, restore_report, split_halves, swap_evaluator)
from qtutor.model import decoder_linears


def make_tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def kl_metric(float_model, ids):
    with torch.no_grad():
        ref = F.log_softmax(float_model(ids).logits.float(), -1)

    @torch.no_grad()
    def metric(model):
        lp = F.log_softmax(model(ids).logits.float(), -1)
        return float((ref.exp() * (ref - lp)).sum(-1).mean())
    return metric


def bound(k: int, n: int) -> int:
    return k * math.ceil(math.log2(n)) + k


# --- the search itself, on a synthetic metric ---------------------------------

@pytest.mark.parametrize("n,culprits", [(1, [0]), (2, [1]), (7, [3]), (210, [0]), (210, [209]), (210, [17, 150]),
                                        (210, [100, 101]), (210, [5, 80, 199]), (64, list(range(0, 64, 16)))],
                         ids=lambda v: str(v))
def test_finds_exactly_the_culprits_within_bound(n, culprits):
    names = [f"l{i}" for i in range(n)]
    bad = {names[i] for i in culprits}
    calls = []

    def evaluate(layers):
        calls.append(layers)
        return 1.0 + sum(0.5 for n in layers if n in bad) + 1e-4 * len(layers)  # small harmless drift per layer
    res = bisect_layers(names, evaluate, reference=1.0, tolerance=0.1)
    assert sorted(res.culprits) == sorted(bad)
    assert res.n_evaluations == len(calls) <= bound(len(bad), max(n, 2)) + 1  # + the whole set
    assert res.steps[0]["n_layers"] == n and res.steps[0]["verdict"] == "bad"
    calls.clear()
    given = bisect_layers(names, evaluate, reference=1.0, tolerance=0.1, suspect_metric=evaluate(tuple(names)))
    assert given.culprits == res.culprits and len(calls) - 1 == given.n_evaluations <= bound(len(bad), max(n, 2))
    assert all({"step", "layers", "n_layers", "metric", "verdict"} <= set(s) for s in res.steps)


def test_no_regression_no_culprits():
    res = bisect_layers(["a", "b", "c"], lambda layers: 1.0, reference=1.0, tolerance=0.01)
    assert res.culprits == [] and res.n_evaluations == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(candidates=[]), "empty"), (dict(candidates=["a", "a"]), "twice"),
    (dict(evaluate=3.0), "callable"), (dict(reference=float("nan")), "reference"),
    (dict(tolerance=-1.0), "tolerance"), (dict(evaluate=lambda s: float("inf")), "finite"),
    (dict(suspect_metric=float("inf")), "suspect_metric"),
])
def test_bad_input(kwargs, match):
    args = dict(candidates=["a", "b"], evaluate=lambda s: 2.0, reference=1.0, tolerance=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        bisect_layers(**args)


def test_split_and_choose_half():
    assert split_halves(["a", "b", "c"]) == (["a"], ["b", "c"])
    with pytest.raises(ValueError, match="at least 2"):
        split_halves(["a"])
    ev = lambda s: 5.0 if "c" in s else 1.0  # noqa: E731
    assert choose_half(list("abcd"), ev, 2.0) == ["c", "d"]
    assert choose_half(list("cdab"), ev, 2.0) == ["c", "d"]


@pytest.mark.parametrize("kwargs,match", [(dict(n_bits=1, group_size=64), "n_bits"), (dict(n_bits=4, group_size=0), "group_size"),
                                          (dict(n_bits=4, group_size=64, scale_error=0.0), "scale_error")])
def test_recipe_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**kwargs)


def test_recipe_bytes_exact():
    # W4 g64 on a 576 x 576 weight: 4 bits per code + per group (9 per row) a 16-bit scale and a 4-bit zero
    assert GOOD.nbytes(576, 576) == (576 * 576 * 4 + 576 * 9 * 20) / 8
    assert Recipe(2, None).nbytes(10, 100) == (10 * 100 * 2 + 10 * 18) / 8


# --- on a tiny random Llama ---------------------------------------------------

def test_plant_is_seeded_and_leaves_the_model_alone():
    model = make_tiny_llama()
    before = {n: m.weight.detach().clone() for n, m in decoder_linears(model).items()}
    a, ans_a = plant_regression(model, seed=3, n_culprits=2)
    _, ans_b = plant_regression(model, seed=3, n_culprits=2)
    _, ans_c = plant_regression(model, seed=4, n_culprits=2)
    assert ans_a.culprits == ans_b.culprits and len(ans_a.culprits) == 2 and ans_a.culprits != ans_c.culprits
    assert all(torch.equal(before[n], m.weight) for n, m in decoder_linears(model).items())
    lin = decoder_linears(a)
    for n in ans_a.culprits:
        assert torch.allclose(lin[n].weight, BAD.apply(before[n]))
    with pytest.raises(ValueError, match="n_culprits"):
        plant_regression(model, seed=0, n_culprits=0)
    with pytest.raises(ValueError, match="not decoder linears"):
        plant_regression(model, seed=0, candidates=["nope"])


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 2), (2, 3)])
def test_bisect_tiny_llama(seed, k):
    model = make_tiny_llama()
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    metric = kl_metric(model, ids)
    # a random model attends almost uniformly, so a doubled q or k barely moves its output: plant elsewhere
    names = list(decoder_linears(model))
    candidates = [n for n in names if not n.endswith(("q_proj", "k_proj"))]
    planted, answer = plant_regression(model, seed=seed, n_culprits=k, candidates=candidates)
    good = recipe_weights(model, GOOD)
    suspect = {n: m.weight.detach().clone() for n, m in decoder_linears(planted).items()}
    work = plant_regression(model, seed=seed, n_culprits=k)[0]  # any copy to write into
    evaluate = swap_evaluator(work, suspect, good, metric)
    reference = evaluate(())
    res = bisect_layers(names, evaluate, reference, tolerance=0.05 * reference, suspect_metric=metric(planted))
    assert sorted(res.culprits) == sorted(answer.culprits)
    assert res.n_evaluations <= bound(k, len(names))
    report = restore_report(model, planted, res.culprits, metric, BAD, reference=reference)
    assert report["metric_after"] < report["metric_before"] and report["recovered"] > 0.8
    lin = decoder_linears(model)
    assert report["culprit_bytes_fp16"] == sum(2 * lin[n].weight.numel() for n in res.culprits)
    assert report["extra_mb"] == pytest.approx((report["culprit_bytes_fp16"] - report["culprit_bytes_quantized"]) / 1e6)


def test_swap_evaluator_refuses_unknown_layers():
    model = make_tiny_llama()
    good = recipe_weights(model, GOOD)
    with pytest.raises(ValueError, match="not decoder linears"):
        swap_evaluator(model, {"x": torch.zeros(1)}, good, lambda m: 0.0)
    evaluate = swap_evaluator(model, dict(good), good, lambda m: 0.0)
    with pytest.raises(ValueError, match="no suspect weights"):
        evaluate(("nope",))


# --- on the real model (slow lane) ----------------------------------------------

def test_bisect_smollm2(smollm2):
    from qtutor.eval import EvalConfig, logit_agreement, reference_logits

    model, tok = smollm2
    ref = reference_logits(model, tok, EvalConfig(ctx=64, n_windows=1))
    metric = lambda m: logit_agreement(m, ref)["kl"]  # noqa: E731
    planted, answer = plant_regression(model, seed=0, n_culprits=2)
    suspect_metric = metric(planted)
    suspect = {n: m.weight.detach().clone() for n, m in decoder_linears(planted).items()}
    good = recipe_weights(model, GOOD)
    evaluate = swap_evaluator(planted, suspect, good, metric)
    reference = evaluate(())
    names = list(decoder_linears(model))
    res = bisect_layers(names, evaluate, reference, tolerance=0.1 * reference, suspect_metric=suspect_metric)
    assert sorted(res.culprits) == sorted(answer.culprits)
    assert res.n_evaluations <= bound(2, len(names))
