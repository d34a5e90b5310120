"""Each checker accepts the right answer and rejects the wrong ones learners write, in one line of their terms.

* every checker: the right answer passes; a function that returns None, a string, the wrong dtype or shape
  (or a tuple of the wrong length), or raises, gets a one-line CheckFailed — never a traceback through
  qtutor/checks.py (its safety net, "could not judge …", must not be what answers);
* each checker's typical mistakes get their specific hint;
* an unfinished stub (NotImplementedError), plain or through ``qtutor.course.exercise``, is "still open";
* the solution of every notebook passes its checker and prints exactly the output stored in the notebook
  (which nbval compares).
"""
import ast
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import qtutor.checks as checks
from qtutor.checks import (CheckFailed, check_awq_scale_search, check_clip_search, check_dequant_gemv,
                           check_gptq_column_step, check_group_fake_quant, check_int8_decomposition,
                           check_k4_scale_packing, check_memory_gb, check_nf4_block, check_outlier_dims,
                           check_q8_0_encoder, check_quantize_asym, check_smooth_scales)
from qtutor.course import exercise
from qtutor.gguf import pack_scales_k4
from qtutor.primitives import PerChannel, PerGroup, QuantSpec, fake_quant, mse

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The checkers' inputs are tiny: on a shared machine two torch threads spin-wait 50× longer than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rejects(check, fn, match: str) -> str:
    """``check(fn)`` fails with one line matching ``match``, from a check that foresaw this answer."""
    with pytest.raises(CheckFailed, match=match) as info:
        check(fn)
    message = str(info.value)
    assert "could not judge" not in message, message
    assert "\n" not in message, message
    return message


# --- right answers, written the way learners write them, with switches for their mistakes -------------

def memory(n, b):
    return n * b / 8 / 1e9


def asym(x, n_bits, include_zero=True, steps=None, clamp=True, zp_shift=0, add_zp=True, rounding=torch.round):
    qmax = 2**n_bits - 1
    lo, hi = x.min().item(), x.max().item()
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (steps or qmax)
    zp = round(-lo / scale) + zp_shift
    q = rounding(x / scale) + (zp if add_zp else 0)
    return (q.clamp(0, qmax) if clamp else q), scale, zp


def group(w, n_bits, gs, qmax=None, rounding=torch.round, guard=True, dequantize=True):
    qmax = qmax or 2 ** (n_bits - 1) - 1
    wg = w.reshape(w.shape[0], -1, gs)
    scale = wg.abs().amax(dim=-1, keepdim=True) / qmax
    if guard:
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(rounding(wg / scale), -qmax, qmax)
    return (q * scale if dequantize else q).reshape(w.shape)


def clip_errors(x, n_bits, ratios):
    return {r: float(mse(x, fake_quant(x, QuantSpec(n_bits=n_bits, clip_ratio=r)))) for r in ratios}


def clip(x, n_bits, ratios):
    errors = clip_errors(x, n_bits, ratios)
    return min(errors, key=errors.get)


def outliers(x, t, strict=False, absolute=True):
    v = x.abs() if absolute else x
    hit = (v > t) if strict else (v >= t)
    return hit.reshape(-1, x.shape[-1]).any(0).nonzero().flatten()


def smooth(a, w, alpha, clamp=True):
    w_max = w.abs().amax(0)
    if clamp:
        w_max = w_max.clamp(min=1e-5)
    return (a.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


def int8(x, w, t, strict=False, outliers_in_scale=False, outlier_path=True, quantize=True):
    """The notebook's solution, with switches."""
    is_outlier = (x.abs() > t) if strict else (x.abs() >= t)
    cols = is_outlier.any(dim=0)
    s_x = (x if outliers_in_scale else x.masked_fill(is_outlier, 0)).abs().amax(dim=1).float()
    s_w = w.abs().amax(dim=1).float()
    c_x = torch.round(x.masked_fill(is_outlier, 0).float() * (127 / s_x[:, None])).to(torch.int32)
    c_w = torch.round(w.float() * (127 / s_w[:, None])).to(torch.int32)
    if not quantize:
        return x.float() @ w.float().T
    if outlier_path:
        c_x[:, cols] = 0
    y = (c_x @ c_w.T).float() * (s_x[:, None] * s_w[None, :]) / 127**2
    w_hat = (c_w.float() * s_w[:, None] / 127).half()
    return (y + (x[:, cols] @ w_hat[:, cols].T).float() * outlier_path).half()


def nf4(x, levels, scale="absmax", edges="mid"):
    v = {"absmax": x / x.abs().max(), "max": x / x.max(), "none": x}[scale]
    return torch.bucketize(v, (levels[:-1] + levels[1:]) / 2 if edges == "mid" else levels).clamp(max=15)


def roundf(v):
    return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))


def q8(x, divide=False, rounding=roundf, fp16_d=False):
    d = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    dc = d.astype(np.float16).astype(np.float32) if fp16_d else d
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(dc == 0, np.float32(0), x / dc) if divide else x * np.where(dc == 0, np.float32(0), np.float32(1) / dc)
    q = rounding(v.astype(np.float32)).astype(np.int8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)


def k4_nibbles_swapped(ls, lm):
    q = pack_scales_k4(ls, lm)
    q[:, 8:12] = (lm[:, 4:] & 0xF) | ((ls[:, 4:] & 0xF) << 4)
    return q


def k4_no_high_bits(ls, lm):
    q = pack_scales_k4(ls, lm)
    q[:, 0:8] &= 63
    return q


def k4_unmasked(ls, lm):
    ls, lm = ls.astype(np.int64), lm.astype(np.int64)
    q = np.zeros((ls.shape[0], 12), dtype=np.int64)
    q[:, 0:4] = ls[:, :4] | (ls[:, 4:] << 6)  # forgot >> 4: bits spill past the byte
    q[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    q[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return q


def gptq_step(W1, Hinv1, i, scale, zero, maxq, propagate=True, divide=True, clamp=True, sign=1, column=False,
              dequantize=True):
    w = W1[:, i]
    code = torch.round(w / scale) + zero
    if clamp:
        code = torch.clamp(code, 0, maxq)
    q = scale * (code - zero)
    err = sign * (w - q) / (Hinv1[i, i] if divide else 1.0)
    if propagate:
        W1[:, i:] -= torch.outer(err, Hinv1[i:, i] if column else Hinv1[i, i:])
    return (q if dequantize else code), err


def awq(linear, x, n_bits, group_size, n_grid, normalise=True, restore=True, grid="reference", absolute=True,
        index=False):
    ratios = {"reference": [i / n_grid for i in range(n_grid)],
              "linspace": torch.linspace(0, 1, n_grid).tolist(),
              "inclusive": [i / n_grid for i in range(n_grid + 1)]}[grid]
    org, w0 = linear(x), linear.weight.detach().clone()
    x_mean = (x.abs() if absolute else x).mean(0)
    best = (float("inf"), None, None)
    for i, ratio in enumerate(ratios):
        s = x_mean.pow(ratio).clamp(min=1e-4)
        if normalise:
            s = s / (s.max() * s.min()).sqrt()
        linear.weight.copy_(pseudo_quantize(w0 * s, n_bits, group_size) / s)
        loss = (org - linear(x)).pow(2).mean().item()
        if restore:
            linear.weight.copy_(w0)
        if loss < best[0]:
            best = (loss, i if index else ratio, s)
    return best[1], best[2]


def pseudo_quantize(w, n_bits, group_size):
    from qtutor.methods.awq import pseudo_quantize_tensor

    return pseudo_quantize_tensor(w, n_bits, group_size)


def awq_ng(*args, **kwargs):
    with torch.no_grad():
        return awq(*args, **kwargs)


def gemv(x, qweight, qzeros, scales, group_size, flip=False, zero=True, scale=True, zero_shift=0, modulo=False):
    K, N = x.shape[0], qweight.shape[1]
    shifts = torch.arange(0, 32, 4)
    if flip:
        shifts = shifts.flip(0)
    q = ((qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF).reshape(K, N).float()
    z = ((qzeros.unsqueeze(2) >> torch.arange(0, 32, 4).view(1, 1, 8)) & 0xF).reshape(qzeros.shape[0], N).float()
    g = torch.arange(K) % qzeros.shape[0] if modulo else torch.arange(K) // group_size
    w = q - (z[g] + zero_shift) if zero else q
    w = w * scales[g] if scale else w
    return x @ w


RIGHT = {
    "memory": (check_memory_gb, memory),
    "asym": (check_quantize_asym, asym),
    "group": (check_group_fake_quant, group),
    "clip": (check_clip_search, clip),
    "outlier": (check_outlier_dims, outliers),
    "smooth": (check_smooth_scales, smooth),
    "int8": (check_int8_decomposition, int8),
    "nf4": (check_nf4_block, nf4),
    "q8_0": (check_q8_0_encoder, q8),
    "k4": (check_k4_scale_packing, pack_scales_k4),
    "gptq": (check_gptq_column_step, gptq_step),
    "awq": (check_awq_scale_search, awq_ng),
    "gemv": (check_dequant_gemv, gemv),
}


@pytest.mark.parametrize("name", RIGHT)
def test_right_answer_passes(name, capsys):
    check, right = RIGHT[name]
    assert check(right) is None
    out = capsys.readouterr().out
    assert "exact: True" in out or "approx: True" in out
    assert "✔" in out


# --- what every checker must say in one line, whatever comes back ---------------------------------

def returns_none(*args):
    _ = args


def returns_text(*args):
    return "0.5"


def divides_by_zero(*args):
    return 1 / 0


@pytest.mark.parametrize("name", RIGHT)
@pytest.mark.parametrize("fn, match", [
    (returns_none, r"returns_none returned None: did you forget the `return` line\?"),
    (returns_text, r"is a string \('0.5'\)|returned a str, expected [23] values"),
    (divides_by_zero, r"divides_by_zero raised ZeroDivisionError \(line 2 of divides_by_zero\): division by zero"),
], ids=["returns None", "returns a string", "raises"])
def test_any_checker_says_what_went_wrong(name, fn, match):
    rejects(RIGHT[name][0], fn, match)


def test_a_failure_shows_as_one_red_line():
    assert CheckFailed("scale 0.5, expected 0.25")._render_traceback_() == ["\x1b[31m✘ scale 0.5, expected 0.25\x1b[0m"]


@pytest.mark.parametrize("value", [np.zeros((64, 34), dtype=np.uint8), {"q": 1}, (None, None), float("nan"), b"abc",
                                   torch.ones(3, dtype=torch.complex64)],
                         ids=["big array", "dict", "two Nones", "NaN", "bytes", "complex"])
@pytest.mark.parametrize("name", ["memory", "asym", "clip", "smooth", "gptq", "awq", "q8_0"])
def test_odd_values_get_a_foreseen_one_line_answer(name, value):
    rejects(RIGHT[name][0], lambda *args: value, r"\S")


def test_the_safety_net_answers_in_one_line():
    @checks._checker
    def check_toy(fn):
        return fn() + "text"  # a checker bug: int + str

    rejects_net = pytest.raises(CheckFailed, match=r"could not judge what <lambda> returned \(TypeError: ")
    with rejects_net:
        check_toy(lambda: 1)


def test_a_multi_line_error_of_the_learner_stays_on_one_line():
    def shouts(n, b):
        raise ValueError("first line\nsecond line")

    rejects(check_memory_gb, shouts, r"shouts raised ValueError \(line 2 of shouts\): first line second line")


def test_not_a_function():
    with pytest.raises(CheckFailed, match=r"pass your function itself \(got a float\)"):
        check_memory_gb(3.5)


@pytest.mark.parametrize("check", [check_memory_gb, check_gptq_column_step], ids=["memory", "gptq"])
def test_a_function_that_never_returns(check, monkeypatch):
    monkeypatch.setattr(checks, "TIME_LIMIT_S", 0.5)

    def spins(*args):
        while True:
            pass

    rejects(check, spins, r"spins ran for more than 0.5 s on a small input: is there a loop that never ends\?")


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("name", RIGHT)
def test_an_open_exercise_is_not_a_failure(name, capsys):
    check, right = RIGHT[name]
    assert check(stub) is None
    assert "stub is still open: replace the `raise NotImplementedError` line" in capsys.readouterr().out
    # through @exercise: the fallback would be right, yet the checker judges the learner's own (open) code
    assert check(exercise("3.2", fallback=right)(stub)) is None
    assert "exercise 3.2 is still open" in capsys.readouterr().out


def test_exercise_decorated_functions_are_judged_on_the_learners_code(capsys):
    check_quantize_asym(exercise("1.1", fallback=lambda x, b: None)(asym))
    assert "✔" in capsys.readouterr().out
    rejects(check_quantize_asym, exercise("1.1", fallback=asym)(lambda x, b: asym(x, b, clamp=False)), "clamp")


# --- each checker's own mistakes ---------------------------------------------------------------------

def _case(id_, check, fn, match):
    return pytest.param(check, fn, match, id=id_)


WRONG = [
    # 00
    _case("memory: GiB", check_memory_gb, lambda n, b: n * b / 8 / 2**30, "GiB"),
    _case("memory: bits", check_memory_gb, lambda n, b: n * b / 1e9, "bits, not bytes"),
    _case("memory: bytes", check_memory_gb, lambda n, b: n * b / 8, "that is bytes"),
    _case("memory: n / b", check_memory_gb, lambda n, b: n / b / 8 / 1e9, "n_params × bits_per_weight / 8"),
    _case("memory: several numbers", check_memory_gb, lambda n, b: torch.tensor([n, b]), "not one number"),
    _case("memory: close but not equal", check_memory_gb, lambda n, b: n * b / 8 / 1e9 * (1 + 1e-7),
          r"= 14\.000001, expected 14 GB"),
    # 01
    _case("asym: no clamp", check_quantize_asym, lambda x, b: asym(x, b, clamp=False),
          r"codes span \[0, 256\] — clamp to \[0, 255\]: here -min / scale = 1\.5 rounds up"),
    _case("asym: range without 0", check_quantize_asym, lambda x, b: asym(x, b, include_zero=False), "include 0.0"),
    _case("asym: / 2**n_bits", check_quantize_asym, lambda x, b: asym(x, b, steps=2**b), "number of steps"),
    _case("asym: / 2**n_bits - 2", check_quantize_asym, lambda x, b: asym(x, b, steps=2**b - 2), "not by 2\\*\\*n_bits - 2"),
    _case("asym: zero_point + 1", check_quantize_asym, lambda x, b: asym(x, b, zp_shift=1), "zero_point 133, expected 132"),
    _case("asym: fractional zero_point", check_quantize_asym, lambda x, b: asym(x, b, zp_shift=0.5), "not an integer"),
    _case("asym: fractional codes", check_quantize_asym, lambda x, b: (asym(x, b)[0] + 0.25, *asym(x, b)[1:]),
          "fractions"),
    _case("asym: no zero-point in q", check_quantize_asym, lambda x, b: asym(x, b, add_zp=False, clamp=False),
          "without the zero-point"),
    _case("asym: floor", check_quantize_asym, lambda x, b: asym(x, b, rounding=torch.floor), "rounded down"),
    _case("asym: two values", check_quantize_asym, lambda x, b: asym(x, b)[:2],
          r"returned 2 values, expected 3: return \(q, scale, zero_point\)"),
    _case("asym: q only", check_quantize_asym, lambda x, b: asym(x, b)[0], "returned a Tensor, expected 3 values"),
    _case("asym: q wrong shape", check_quantize_asym, lambda x, b: (asym(x, b)[0][:-1], *asym(x, b)[1:]),
          r"q has shape \(63,\), expected \(64,\)"),
    _case("asym: scale per element", check_quantize_asym, lambda x, b: (asym(x, b)[0], x, asym(x, b)[2]),
          "scale is a Tensor .* not one number"),
    _case("asym: q as text", check_quantize_asym, lambda x, b: ("q", *asym(x, b)[1:]), "q is a string"),
    # 02
    _case("group: per-channel", check_group_fake_quant,
          lambda w, b, g: fake_quant(w, QuantSpec(n_bits=b, granularity=PerChannel(0))), "per-channel"),
    _case("group: qmax = 2**(b-1)", check_group_fake_quant, lambda w, b, g: group(w, b, g, qmax=2 ** (b - 1)),
          r"you used qmax = 8; .* qmax = 2\*\*\(n_bits - 1\) - 1 = 7"),
    _case("group: qmax = 2**b - 1", check_group_fake_quant, lambda w, b, g: group(w, b, g, qmax=2**b - 1),
          "you used qmax = 15"),
    _case("group: floor", check_group_fake_quant, lambda w, b, g: group(w, b, g, rounding=torch.floor), "floor"),
    _case("group: zero group → NaN", check_group_fake_quant, lambda w, b, g: group(w, b, g, guard=False),
          r"NaN or inf in rows \[5\] — w\[5, 128:\] is all zero"),
    _case("group: integer codes", check_group_fake_quant, lambda w, b, g: group(w, b, g, dequantize=False).to(torch.int8),
          "dtype torch.int8: return floats"),
    _case("group: float codes", check_group_fake_quant, lambda w, b, g: group(w, b, g, dequantize=False),
          "holds the integer codes"),
    _case("group: flattened", check_group_fake_quant, lambda w, b, g: group(w, b, g).flatten(), "reshape back"),
    _case("group: returns w", check_group_fake_quant, lambda w, b, g: w, "equals w"),
    # 03
    _case("clip: largest error", check_clip_search,
          lambda x, b, rs: max(clip_errors(x, b, rs).items(), key=lambda kv: kv[1])[0], "LARGEST"),
    _case("clip: not a candidate", check_clip_search, lambda x, b, rs: 0.123, "not one of the candidate"),
    _case("clip: not the best", check_clip_search, lambda x, b, rs: 1.0, "the best is"),
    _case("clip: the index", check_clip_search, lambda x, b, rs: rs.index(clip(x, b, rs)), "looks like an index"),
    _case("clip: the error", check_clip_search, lambda x, b, rs: min(clip_errors(x, b, rs).values()),
          "that is an error"),
    _case("clip: every error", check_clip_search, lambda x, b, rs: torch.tensor(list(clip_errors(x, b, rs).values())),
          "not one number"),
    _case("clip: tensor ratio", check_clip_search, lambda x, b, rs: torch.tensor(rs)[rs.index(1.0)], "the best is"),
    # 04
    _case("outlier: >", check_outlier_dims, lambda x, t: outliers(x, t, strict=True), "not >"),
    _case("outlier: x, not |x|", check_outlier_dims, lambda x, t: outliers(x, t, absolute=False), r"\|x\|"),
    _case("outlier: last axis", check_outlier_dims, lambda x, t: (x.abs() >= t).any(-1).nonzero().flatten(),
          "reduce over"),
    _case("outlier: mask", check_outlier_dims, lambda x, t: (x.abs() >= t).reshape(-1, 8).any(0), "mask"),
    _case("outlier: 0/1 mask", check_outlier_dims, lambda x, t: (x.abs() >= t).reshape(-1, 8).any(0).long(), "mask"),
    _case("outlier: unsorted", check_outlier_dims, lambda x, t: outliers(x, t).flip(0), "sorted"),
    _case("outlier: per token", check_outlier_dims, lambda x, t: (x.abs() >= t).reshape(-1, 8).nonzero()[:, 1].repeat(2),
          "each dim once"),
    _case("outlier: fractions", check_outlier_dims, lambda x, t: outliers(x, t) + 0.5, "integer indices"),
    # 05
    _case("smooth: swapped", check_smooth_scales, lambda a, w, al: a.pow(1 - al) / w.abs().amax(0).pow(al), "swapped"),
    _case("smooth: no abs", check_smooth_scales, lambda a, w, al: a.pow(al) / w.amax(0).clamp(min=1e-5).pow(1 - al),
          "abs before max"),
    _case("smooth: 1 / s", check_smooth_scales, lambda a, w, al: 1 / smooth(a, w, al), "you return 1 / s"),
    _case("smooth: whole-matrix max", check_smooth_scales, lambda a, w, al: a.pow(al) / w.abs().amax().pow(1 - al),
          "not over the whole matrix"),
    _case("smooth: per output row", check_smooth_scales, lambda a, w, al: w.abs().amax(1),
          r"shape \(16,\).* reduce W over its output axis \(dim 0\)"),
    _case("smooth: no clamp", check_smooth_scales, lambda a, w, al: smooth(a, w, al, clamp=False),
          r"column 7 of W is all zero .* clamp max\|W\| at 1e-5"),
    _case("smooth: truncated", check_smooth_scales, lambda a, w, al: smooth(a, w, al)[:3], "shape"),
    _case("smooth: integers", check_smooth_scales, lambda a, w, al: smooth(a, w, al).int(), "dtype torch.int32"),
    # 06
    _case("int8: > at the threshold", check_int8_decomposition, lambda x, w, t: int8(x, w, t, strict=True),
          r"x\[1, 9\] is exactly 6\.0, the threshold: .*>= threshold, not >"),
    _case("int8: outliers set the scale", check_int8_decomposition,
          lambda x, w, t: int8(x, w, t, outliers_in_scale=True), "outliers set the row scales"),
    _case("int8: outliers ignored", check_int8_decomposition, lambda x, w, t: int8(x, w, 1e9), "ignores the outlier"),
    _case("int8: fp16 product", check_int8_decomposition, lambda x, w, t: int8(x, w, t, quantize=False), "fp16 product"),
    _case("int8: integer accumulator", check_int8_decomposition,
          lambda x, w, t: torch.round(x.float()).to(torch.int32) @ torch.round(w.float() * 100).to(torch.int32).T,
          "dtype torch.int32: return floats"),
    _case("int8: transposed", check_int8_decomposition, lambda x, w, t: int8(x, w, t).T,
          r"shape \(24, 12\), expected \(12, 24\)"),
    _case("int8: NaN", check_int8_decomposition, lambda x, w, t: int8(x, w, t) * float("nan"), "NaN"),
    # 09
    _case("nf4: max, not absmax", check_nf4_block, lambda x, lv: nf4(x, lv, scale="max"), "absmax"),
    _case("nf4: not scaled", check_nf4_block, lambda x, lv: nf4(x, lv, scale="none"), "scale the block first"),
    _case("nf4: levels, not midpoints", check_nf4_block, lambda x, lv: nf4(x, lv, edges="levels"), "midpoints"),
    _case("nf4: reversed", check_nf4_block, lambda x, lv: 15 - nf4(x, lv), "backwards"),
    _case("nf4: level values", check_nf4_block, lambda x, lv: lv[nf4(x, lv)], "not the levels' values"),
    _case("nf4: scaled values", check_nf4_block, lambda x, lv: lv[nf4(x, lv)] * 100, "indices"),
    _case("nf4: uniform levels", check_nf4_block,
          lambda x, lv: torch.bucketize(x / x.abs().max(), torch.linspace(-1, 1, 17)[1:-1]), "codes differ"),
    _case("nf4: half a block", check_nf4_block, lambda x, lv: nf4(x, lv)[:32], r"shape \(32,\)"),
    # 10
    _case("q8_0: x / d", check_q8_0_encoder, lambda x: q8(x, divide=True),
          r"llama\.cpp computes id = 1/d once and multiplies"),
    _case("q8_0: np.round", check_q8_0_encoder, lambda x: q8(x, rounding=np.round), "roundf"),
    _case("q8_0: x / d and np.round", check_q8_0_encoder, lambda x: q8(x, divide=True, rounding=np.round),
          "two things: .*roundf.*1/d"),
    _case("q8_0: fp16 d for the codes", check_q8_0_encoder, lambda x: q8(x, fp16_d=True), "float32 d"),
    _case("q8_0: d last", check_q8_0_encoder, lambda x: np.roll(q8(x), -2, axis=1), "d must come first"),
    _case("q8_0: 33 bytes", check_q8_0_encoder, lambda x: q8(x)[:, :33], "uint8"),
    _case("q8_0: int8 codes appended", check_q8_0_encoder,
          lambda x: np.concatenate([q8(x)[:, :2], q8(x)[:, 2:].view(np.int8)], axis=1), "view the bytes as uint8"),
    _case("q8_0: floats", check_q8_0_encoder, lambda x: q8(x).astype(np.float32), "uint8"),
    _case("q8_0: a list of strings", check_q8_0_encoder, lambda x: ["a", "b"], "not an array of numbers"),
    # 10, k-quants
    _case("k4: swapped", check_k4_scale_packing, lambda ls, lm: pack_scales_k4(lm, ls), "swapped"),
    _case("k4: nibbles swapped", check_k4_scale_packing, k4_nibbles_swapped, "low nibble"),
    _case("k4: no high bits", check_k4_scale_packing, k4_no_high_bits, "sub-blocks 4-7"),
    _case("k4: bits past the byte", check_k4_scale_packing, k4_unmasked, "0..255"),
    _case("k4: concatenated", check_k4_scale_packing, lambda ls, lm: np.concatenate([ls, lm], axis=1), "12 bytes"),
    _case("k4: fractions", check_k4_scale_packing, lambda ls, lm: pack_scales_k4(ls, lm) / 3, "float64 with fractions"),
    _case("k4: floats", check_k4_scale_packing, lambda ls, lm: pack_scales_k4(ls, lm).astype(np.float32),
          r"dtype float32: return bytes \(np.uint8\)"),
    # 07
    _case("gptq: no update", check_gptq_column_step, lambda *a: gptq_step(*a, propagate=False), "round-to-nearest"),
    _case("gptq: not divided", check_gptq_column_step, lambda *a: gptq_step(*a, divide=False), r"Hinv1\[i, i\]"),
    _case("gptq: no clamp", check_gptq_column_step, lambda *a: gptq_step(*a, clamp=False),
          r"codes span \[.*\]: clamp round\(w / scale\) \+ zero to \[0, maxq\]"),
    _case("gptq: err sign", check_gptq_column_step, lambda *a: gptq_step(*a, sign=-1), "wrong sign"),
    _case("gptq: column of Hinv1", check_gptq_column_step, lambda *a: gptq_step(*a, column=True),
          r"only column i of W1 changed: .*row i"),
    _case("gptq: codes", check_gptq_column_step, lambda *a: gptq_step(*a, dequantize=False), "not on the grid"),
    _case("gptq: off the grid", check_gptq_column_step, lambda *a: (gptq_step(*a)[0] + 0.01, gptq_step(*a)[1]),
          "not on the grid"),
    _case("gptq: integer codes", check_gptq_column_step,
          lambda *a: (gptq_step(*a, dequantize=False)[0].long(), gptq_step(*a)[1]), r"q \(column 0\) has dtype torch.int64"),
    _case("gptq: one value", check_gptq_column_step, lambda *a: gptq_step(*a)[0], "expected 2 values"),
    _case("gptq: whole block", check_gptq_column_step, lambda W1, *a: (W1.clone(), gptq_step(W1, *a)[1]),
          r"shape \(24, 16\), expected \(24,\)"),
    # 08
    _case("awq: weight not restored", check_awq_scale_search, lambda *a: awq_ng(*a, restore=False), "restore"),
    _case("awq: α = 0", check_awq_scale_search, lambda lin, x, *a: (0.0, torch.ones(x.shape[1])), "best ratio 0.0"),
    _case("awq: linspace grid", check_awq_scale_search, lambda *a: awq_ng(*a, grid="linspace"),
          r"not on the reference's grid: .* 1\.0 is not tried"),
    _case("awq: grid with 1.0", check_awq_scale_search, lambda *a: awq_ng(*a, grid="inclusive"),
          r"best ratio 1\.0 is not on the reference's grid.*here the best is 0\.95"),
    _case("awq: index", check_awq_scale_search, lambda *a: awq_ng(*a, index=True), "that is the index i"),
    _case("awq: not normalised", check_awq_scale_search, lambda *a: awq_ng(*a, normalise=False), "not normalised"),
    _case("awq: mean x, not |x|", check_awq_scale_search, lambda *a: awq_ng(*a, absolute=False), r"mean \|x\|"),
    _case("awq: no torch.no_grad", check_awq_scale_search, awq, r"torch\.no_grad\(\)"),
    _case("awq: scales only", check_awq_scale_search, lambda *a: awq_ng(*a)[1], "expected 2 values"),
    _case("awq: scales per output", check_awq_scale_search, lambda *a: (awq_ng(*a)[0], torch.ones(64)),
          "one per input channel"),
    _case("awq: integer scales", check_awq_scale_search, lambda *a: (awq_ng(*a)[0], awq_ng(*a)[1].long()),
          "dtype torch.int64"),
    # 11
    _case("gemv: nibbles", check_dequant_gemv, lambda *a: gemv(*a, flip=True), "wrong nibbles"),
    _case("gemv: no zero", check_dequant_gemv, lambda *a: gemv(*a, zero=False), "zero-point is not subtracted"),
    _case("gemv: no scale", check_dequant_gemv, lambda *a: gemv(*a, scale=False), "scale is missing"),
    _case("gemv: zero + 1 (v1)", check_dequant_gemv, lambda *a: gemv(*a, zero_shift=1), "v1 stored zero − 1"),
    _case("gemv: groups interleaved", check_dequant_gemv, lambda *a: gemv(*a, modulo=True), "k // group_size"),
    _case("gemv: integer", check_dequant_gemv, lambda *a: gemv(*a).long(), "dtype torch.int64"),
    _case("gemv: short", check_dequant_gemv, lambda *a: gemv(*a)[:-1], r"shape \(47,\)"),
]


@pytest.mark.parametrize("check, fn, match", WRONG)
def test_wrong_answer_is_caught(check, fn, match):
    rejects(check, fn, match)


def test_q8_0_inputs_separate_division_from_the_reciprocal():
    """The Q8_0 checker's input holds blocks where round(x / d) ≠ round(x · (1/d)), apart from the tie block."""
    from qtutor.checks import _q8_0_variant, _reciprocal_decides
    from qtutor.gguf import quantize_blocks

    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 32)).astype(np.float32)
    for r in range(8):
        assert len(_reciprocal_decides(x[r])) >= 1
    differs = (_q8_0_variant(x, divide=True) != quantize_blocks(x, "Q8_0")).any(axis=1)
    assert differs.all()


# --- the notebooks' own solutions ----------------------------------------------------------------

def _solution_cells():
    cases = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for k, cell in enumerate(cells):
            source = "".join(cell["source"])
            if "### BEGIN SOLUTION" not in source:
                continue
            for later in cells[k + 1:]:
                m = re.match(r"\s*(check_\w+)\((\w+)\)\s*$", "".join(later["source"]))
                if m:
                    cases.append(pytest.param(source, m.group(1), m.group(2), later.get("outputs", []),
                                              id=f"{path.stem}:{m.group(2)}"))
                    break
    return cases


_PREAMBLE = """\
import numpy as np
import torch
from qtutor import exercises
from qtutor.course import exercise
from qtutor.exercises import kernel_stub_errors
from qtutor.methods.awq import pseudo_quantize_tensor
from qtutor.primitives import QuantSpec, fake_quant, mse
"""


@pytest.mark.parametrize("source, checker, function, outputs", _solution_cells())
def test_notebook_solution_passes_and_prints_the_stored_output(source, checker, function, outputs, tmp_path, capsys):
    # a module file, not exec: triton.jit reads the kernel's source; decorators @exercise(...) are dropped
    # (their fallbacks are the notebook's business), so that the learner's function itself is judged
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            node.decorator_list = [d for d in node.decorator_list
                                   if not (isinstance(d, ast.Call) and getattr(d.func, "id", None) == "exercise")]
    source = ast.unparse(tree)
    preamble = _PREAMBLE + ("import triton\nimport triton.language as tl\n" if "triton" in source else "")
    module_path = tmp_path / f"solution_{function}.py"
    module_path.write_text(preamble + source + "\n")
    spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    getattr(checks, checker)(getattr(module, function))
    printed = capsys.readouterr().out
    assert "✔" in printed, printed
    stored = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
    if stored:  # nbval compares this cell's output with what the notebook holds
        assert printed == stored
