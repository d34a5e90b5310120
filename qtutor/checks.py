"""Exercise checkers: run the learner's function on fixed inputs, compare with qtutor, say what is wrong.

Every checker prints one line ``exact: … | approx: … | max diff: …`` (as in
Karpathy's nn-zero-to-hero) and raises :class:`CheckFailed` with a diagnosis
when the answer is wrong.
"""
from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable

import torch

from .primitives import PerChannel, PerGroup, PerTensor, QuantSpec, choose_qparams, fake_quant, quantize

__all__ = [
    "CheckFailed", "compare", "check_memory_gb", "check_quantize_asym", "check_group_fake_quant",
    "check_clip_search", "check_outlier_dims", "check_smooth_scales", "check_int8_decomposition",
    "check_nf4_block", "check_q8_0_encoder", "check_k4_scale_packing", "check_gptq_column_step",
    "check_awq_scale_search", "check_dequant_gemv", "check_capstone_solution", "TIME_LIMIT_S",
]

TIME_LIMIT_S = 30.0  # a learner's function that runs longer on a checker's small inputs never returns


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how.

    In a notebook it shows as one line (IPython's ``_render_traceback_``), not as a traceback
    through this file: the diagnosis is the message.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m✘ {self}\x1b[0m"]


class _ExerciseOpen(Exception):
    """The learner's function still raises the stub's NotImplementedError."""


class _TimeUp(BaseException):
    pass


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (torch's and numpy's may span several), at most 300 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _describe(value) -> str:
    text = " ".join(repr(value).split())  # one line, whatever the object's repr
    return text if len(text) <= 40 else text[:37] + "..."


class _Learner:
    """The learner's function, called the way a checker needs: time-limited, errors in the learner's terms."""

    def __init__(self, fn: Callable, time_limit: float | None = None):
        self.fn = getattr(fn, "learner_fn", fn)  # an @exercise-wrapped function: judge the learner's code
        self.name = getattr(self.fn, "__name__", "your function")
        self.time_limit = time_limit  # None: TIME_LIMIT_S, read at call time
        self.slow_hint = "is there a loop that never ends?"

    def __call__(self, *args, **kwargs):
        use_alarm = threading.current_thread() is threading.main_thread()
        if use_alarm:
            def _alarm(signum, frame):
                raise _TimeUp

            previous = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, self.time_limit or TIME_LIMIT_S)
        try:
            result = self.fn(*args, **kwargs)
        except NotImplementedError:
            raise _ExerciseOpen from None
        except _TimeUp:
            if self.time_limit:
                raise CheckFailed(f"{self.name} ran for more than {self.time_limit:g} s: {self.slow_hint}") from None
            raise CheckFailed(f"{self.name} ran for more than {TIME_LIMIT_S:g} s on a small input: "
                              "is there a loop that never ends?") from None
        except CheckFailed:
            raise
        except Exception as exc:  # the learner's bug: say what and where, in one line
            tb = exc.__traceback__
            line = None
            while tb is not None:
                if tb.tb_frame.f_code is getattr(self.fn, "__code__", None):
                    line = tb.tb_lineno - self.fn.__code__.co_firstlineno + 1
                tb = tb.tb_next
            where = f" (line {line} of {self.name})" if line else ""
            raise CheckFailed(f"{self.name} raised {type(exc).__name__}{where}: {_one_line(exc)}") from None
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        if result is None:
            raise CheckFailed(f"{self.name} returned None: did you forget the `return` line?")
        return result


def _tensor(value, what: str, shape: tuple | None = None, floating: bool = False, finite: bool = True) -> torch.Tensor:
    """``value`` as a tensor, or a one-line CheckFailed saying what the learner returned instead."""
    if isinstance(value, str):
        raise CheckFailed(f"{what} is a string ({_describe(value)}): return a tensor")
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise CheckFailed(f"{what} is a {type(value).__name__}, not a tensor or array of numbers") from None
    if t.dtype == torch.bool and floating:
        raise CheckFailed(f"{what} has dtype torch.bool (True/False): return the numbers themselves")
    if floating and not (t.is_floating_point() or t.is_complex()):
        raise CheckFailed(f"{what} has dtype {t.dtype}: return floats (the dequantized values), not integer codes")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CheckFailed(f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise CheckFailed(f"{what} holds {n_bad} NaN or inf value(s): a division by zero, or the power of a negative number?")
    return t.cpu()


def _number(value, what: str) -> float:
    """``value`` as a Python float, or a one-line CheckFailed."""
    if isinstance(value, str):
        raise CheckFailed(f"{what} is a string ({_describe(value)}): return a number")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed(f"{what} is a {type(value).__name__} ({_describe(value)}), not one number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise CheckFailed(f"{what} is {number}: a division by zero?")
    return number


def _array(value, what: str):
    """``value`` as a numpy array of numbers (for the GGUF exercises), or a one-line CheckFailed."""
    import numpy as np

    if isinstance(value, str):
        raise CheckFailed(f"{what} is a string ({_describe(value)}): return a numpy array")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed(f"{what} is a {type(value).__name__}, not an array of numbers") from None
    if a.dtype.kind not in "biuf":
        raise CheckFailed(f"{what} is a {type(value).__name__} of {a.dtype} values, not an array of numbers")
    return a


def _parts(value, n: int, what: str, names: str) -> tuple:
    """The ``n`` values of a learner's tuple, or a one-line CheckFailed naming what it should be."""
    if isinstance(value, (tuple, list)) and len(value) == n:
        return tuple(value)
    if isinstance(value, (tuple, list)):
        raise CheckFailed(f"{what} returned {len(value)} values, expected {n}: return {names}")
    raise CheckFailed(f"{what} returned a {type(value).__name__}, expected {n} values: return {names}")


def _pair(got: float, want: float) -> tuple[str, str]:
    """``got`` and ``want`` printed with enough digits that different values never look the same."""
    for digits in (6, 8, 10, 13, 17):
        a, b = f"{got:.{digits}g}", f"{want:.{digits}g}"
        if a != b or got == want:
            return a, b
    return repr(got), repr(want)


def _integral(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.equal(t, t.round()))


def _checker(check: Callable) -> Callable:
    """Wrap a checker: the learner's function is time-limited and an unfinished stub is 'still open', not a failure.

    Whatever else goes wrong while judging the learner's answer becomes a one-line CheckFailed too:
    a learner never sees a traceback through this file.
    """

    @functools.wraps(check)
    def run(fn: Callable, *args, **kwargs):
        if not callable(fn):
            raise CheckFailed(f"pass your function itself (got a {type(fn).__name__}): {check.__name__}(my_function)")
        number = getattr(fn, "exercise_number", None)
        learner = _Learner(fn)
        try:
            return check(learner, *args, **kwargs)
        except _ExerciseOpen:
            label = f"exercise {number}" if number else f"{getattr(fn, '__name__', 'this exercise')}"
            print(f"… {label} is still open: replace the `raise NotImplementedError` line above with your code, "
                  "then run this cell again")
            return None
        except CheckFailed:
            raise
        except Exception as exc:  # an answer of a shape or type no check above foresaw
            raise CheckFailed(f"could not judge what {learner.name} returned ({type(exc).__name__}: {_one_line(exc)}): "
                              "check the types and shapes the exercise asks for") from None

    return run


def compare(name: str, got, expected, atol: float = 0.0, rtol: float = 0.0, digits: int = 3) -> None:
    """Print exact / approximate / max difference (to ``digits`` significant digits) for ``got`` vs ``expected``."""
    got_t = torch.as_tensor(got, dtype=torch.float64)
    exp_t = torch.as_tensor(expected, dtype=torch.float64)
    if got_t.shape != exp_t.shape:
        raise CheckFailed(f"{name}: shape {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}")
    exact = bool(torch.equal(got_t, exp_t))
    approx = bool(torch.allclose(got_t, exp_t, atol=atol, rtol=rtol))
    diff = float((got_t - exp_t).abs().max()) if got_t.numel() else 0.0
    print(f"{name:<22} exact: {str(exact):<5} | approx: {str(approx):<5} | max diff: {diff:.{digits}g}")


def _ok(msg: str) -> None:
    print(f"✔ {msg}")


# --- 00: memory ----------------------------------------------------------------

@_checker
def check_memory_gb(fn: Callable[[float, float], float]) -> None:
    """``fn(n_params, bits_per_weight)`` must return weight memory in GB (10**9 bytes)."""
    cases = [(7e9, 16), (7e9, 4), (70e9, 8), (180e9, 4.5), (135e6, 32)]
    got_all, want_all = [], []
    for n, b in cases:
        call = f"{fn.name}({n:.4g}, {b})"
        got, want = _number(fn(n, b), call), n * b / 8 / 1e9
        got_all.append(got)
        want_all.append(want)
        if abs(got - want) <= 1e-9 * want:
            continue
        g, w = _pair(got, want)
        if abs(got - want * 1e9 / 2**30) <= 1e-6 * want:
            raise CheckFailed(f"{call} = {g}: that is GiB (2**30 bytes); the table uses GB (10**9 bytes)")
        if abs(got - want * 8) <= 1e-6 * want:
            raise CheckFailed(f"{call} = {g}: you counted bits, not bytes (divide by 8)")
        if abs(got - want * 1e9) <= 1e-6 * want * 1e9:
            raise CheckFailed(f"{call} = {g}: that is bytes; divide by 10**9 for GB")
        if abs(got - n * b / 1e9 / 16) <= 1e-6 * want or abs(got - n / b / 8 / 1e9) <= 1e-6 * want:
            raise CheckFailed(f"{call} = {g}, expected {w} GB: bytes = n_params × bits_per_weight / 8")
        raise CheckFailed(f"{call} = {g}, expected {w} GB")
    compare("memory (GB)", got_all, want_all, rtol=1e-9)
    _ok("memory formula correct")


# --- 01: asymmetric scale and zero-point ----------------------------------------

@_checker
def check_quantize_asym(fn: Callable[[torch.Tensor, int], tuple]) -> None:
    """``fn(x, n_bits) -> (q, scale, zero_point)``: per-tensor asymmetric, integer zero-point."""
    gen = torch.Generator().manual_seed(7)
    inputs = [
        torch.randn(64, generator=gen) * 2 + 0.5,
        torch.rand(64, generator=gen) * 3 + 1.0,  # all positive: 0.0 must stay representable
        -torch.rand(64, generator=gen),  # all negative
    ]
    for n_bits in (8, 4):
        spec = QuantSpec(n_bits=n_bits, symmetric=False)
        qmax = spec.qmax
        # -min / scale = 1.5 exactly, a rounding tie: zero_point = round(1.5) = 2, and the largest value
        # (qmax - 1.5) · scale rounds to qmax - 1 (half to even) + 2 = qmax + 1 — only the clamp keeps it in range
        tie = torch.cat([torch.tensor([-1.5, qmax - 1.5]), torch.linspace(-1.2, qmax - 2.0, 30)]) * 0.25
        for i, x in enumerate([*inputs, tie]):
            where = f"input {i} ({n_bits}-bit)"
            q, scale, zp = _parts(fn(x.clone(), n_bits), 3, f"{fn.name}(x, {n_bits})", "(q, scale, zero_point)")
            scale = _number(scale, f"{where}: scale")
            zp = _number(zp, f"{where}: zero_point")
            q = _tensor(q, f"{where}: q", shape=tuple(x.shape))
            qp = choose_qparams(x, spec)
            want_q = quantize(x, qp, spec).long()
            want_scale, want_zp = qp.scale.item(), int(qp.zero_point)
            if abs(scale - want_scale) > 1e-6 * want_scale:
                hint = ""
                if abs(scale - (x.max() - x.min()).item() / qmax) < 1e-6 * want_scale:
                    hint = " — the range must include 0.0: use min(x.min(), 0) and max(x.max(), 0)"
                elif abs(scale - want_scale * qmax / 2**n_bits) < 1e-6 * want_scale:
                    hint = f" — divide by 2**n_bits - 1 = {qmax}, the number of steps, not by 2**n_bits"
                elif abs(scale - want_scale * qmax / (qmax - 1)) < 1e-6 * want_scale:
                    hint = f" — divide by 2**n_bits - 1 = {qmax}, not by 2**n_bits - 2"
                elif abs(scale - 1 / want_scale) < 1e-6 / want_scale:
                    hint = " — that is 1 / scale: scale = (max - min) / (2**n_bits - 1)"
                g, w = _pair(scale, want_scale)
                raise CheckFailed(f"{where}: scale {g}, expected {w}{hint}")
            if zp != round(zp):
                raise CheckFailed(f"{where}: zero_point {zp:.6g} is not an integer — round(-min / scale), an integer code")
            if int(zp) != want_zp:
                hint = " (it must be ≥ 0: -min / scale, with min ≤ 0)" if zp < 0 else ""
                raise CheckFailed(f"{where}: zero_point {int(zp)}, expected {want_zp} — "
                                  f"round(-min / scale), an integer code{hint}")
            if q.dtype == torch.bool or q.is_complex():
                raise CheckFailed(f"{where}: q has dtype {q.dtype}: return the integer codes")
            if not _integral(q):
                raise CheckFailed(f"{where}: q holds fractions — round to the nearest integer")
            got_q = q.long()
            if torch.equal(got_q, want_q):
                continue
            if torch.equal(got_q, want_q - want_zp) or torch.equal(got_q, torch.round(x / want_scale).long()):
                raise CheckFailed(f"{where}: q is round(x / scale) without the zero-point — add zero_point = {want_zp}")
            if int(got_q.min()) < 0 or int(got_q.max()) > qmax:
                extra = (f": here -min / scale = 1.5 rounds up to zero_point {want_zp}, which pushes the largest value "
                         f"one code past {qmax}") if i == len(inputs) else ""
                raise CheckFailed(f"{where}: codes span [{int(got_q.min())}, {int(got_q.max())}] — "
                                  f"clamp to [0, {qmax}]{extra}")
            floor_q = (torch.floor(x / want_scale) + want_zp).clamp(0, qmax).long()
            if torch.equal(got_q, floor_q):
                raise CheckFailed(f"{where}: codes are rounded down — use torch.round (nearest), not floor or int()")
            n_bad = int((got_q != want_q).sum())
            raise CheckFailed(f"{where}: {n_bad} of {x.numel()} codes differ from qtutor.quantize "
                              "(q = clamp(round(x / scale) + zero_point, 0, 2**n_bits - 1))")
        compare(f"codes ({n_bits}-bit)", got_q, want_q)
    _ok("asymmetric quantization matches qtutor")


# --- 02: per-group fake quantization -------------------------------------------------

def _sym_group_fake_quant(w: torch.Tensor, qmax: int, gs: int, rounding=torch.round) -> torch.Tensor:
    """Symmetric group-wise fake quantization with a given ``qmax`` and rounding (the learners' variants)."""
    wg = w.reshape(w.shape[0], -1, gs)
    scale = wg.abs().amax(-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(rounding(wg / scale), -qmax, qmax) * scale).reshape(w.shape)


@_checker
def check_group_fake_quant(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """``fn(w, n_bits, group_size) -> w_hat``: symmetric, groups of consecutive inputs in each row."""
    # no missing-clamp case here: with scale = max|w| / qmax per group, round(w / scale) never leaves ±qmax
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(24, 192, generator=gen)
    w[3, 70] = 12.0  # one outlier: only its own group should suffer
    w[5, 128:] = 0.0  # an all-zero group: scale 0 must not turn into NaN
    shown = None
    for n_bits, gs in ((4, 64), (3, 32), (8, 192)):
        label_call = f"{fn.name}(w, {n_bits}, {gs})"
        got = _tensor(fn(w.clone(), n_bits, gs), label_call, floating=True, finite=False)
        if got.shape != w.shape:
            raise CheckFailed(f"w_hat has shape {tuple(got.shape)}: reshape back to {tuple(w.shape)}")
        got = got.float()
        if not bool(torch.isfinite(got).all()):
            rows = sorted({int(r) for r in (~torch.isfinite(got)).nonzero()[:, 0]})
            hint = (" — w[5, 128:] is all zero, so its scale is 0 and 0 / 0 = NaN: use scale 1 where it is 0"
                    if rows == [5] else "")
            raise CheckFailed(f"{n_bits}-bit g{gs}: w_hat holds NaN or inf in rows {rows}{hint}")
        want = fake_quant(w, QuantSpec(n_bits=n_bits, granularity=PerGroup(gs)))
        if torch.allclose(got, want, atol=1e-6):
            shown = (got, want) if shown is None else shown
            continue
        qmax = 2 ** (n_bits - 1) - 1
        for label, spec in (
            ("per-tensor", QuantSpec(n_bits=n_bits, granularity=PerTensor())),
            ("per-channel (one scale per row)", QuantSpec(n_bits=n_bits, granularity=PerChannel(0))),
            ("groups along the output axis (columns)", QuantSpec(n_bits=n_bits, granularity=PerGroup(gs, axis=0))
             if w.shape[0] % gs == 0 else None),
        ):
            if spec is not None and torch.allclose(got, fake_quant(w, spec), atol=1e-6):
                raise CheckFailed(f"{n_bits}-bit g{gs}: your result equals {label} quantization — "
                                  "view w as (rows, n_groups, group_size) and reduce over the last axis")
        for wrong_qmax in (2 ** (n_bits - 1), 2**n_bits - 1, 2**n_bits):
            if torch.allclose(got, _sym_group_fake_quant(w, wrong_qmax, gs), atol=1e-6):
                raise CheckFailed(f"{n_bits}-bit g{gs}: you used qmax = {wrong_qmax}; symmetric {n_bits}-bit codes "
                                  f"go from -{qmax} to {qmax}: qmax = 2**(n_bits - 1) - 1 = {qmax}")
        for rounding, name in ((torch.floor, "floor"), (torch.trunc, "trunc / int()")):
            if torch.allclose(got, _sym_group_fake_quant(w, qmax, gs, rounding), atol=1e-6):
                raise CheckFailed(f"{n_bits}-bit g{gs}: you rounded with {name}: use torch.round (nearest)")
        if torch.allclose(got, w, atol=1e-6):
            raise CheckFailed(f"{n_bits}-bit g{gs}: w_hat equals w: quantize (round w / scale), then multiply back")
        if _integral(got) and float(got.abs().max()) <= 2**n_bits:
            raise CheckFailed(f"{n_bits}-bit g{gs}: w_hat holds the integer codes: multiply them back by the scale")
        raise CheckFailed(f"{n_bits}-bit g{gs}: max diff {float((got - want).abs().max()):.3g} from qtutor.fake_quant")
    compare("w_hat (4-bit g64)", *shown, atol=1e-6)
    _ok("group-wise fake quantization matches qtutor")


# --- 03: clipping search -----------------------------------------------------------

@_checker
def check_clip_search(fn: Callable[[torch.Tensor, int, list], float]) -> None:
    """``fn(x, n_bits, ratios) -> ratio`` minimising the MSE of symmetric per-tensor fake quantization."""
    from .primitives import mse

    gen = torch.Generator().manual_seed(3)
    ratios = [round(0.3 + 0.05 * i, 2) for i in range(15)]
    for n_bits, x in ((4, torch.randn(4096, generator=gen)), (8, torch.randn(4096, generator=gen) ** 3),
                      (3, torch.distributions.Laplace(0.0, 1.0).sample((4096,)))):
        errs = {r: float(mse(x, fake_quant(x, QuantSpec(n_bits=n_bits, clip_ratio=r)))) for r in ratios}
        want = min(errs, key=errs.get)
        got = _number(fn(x.clone(), n_bits, list(ratios)), f"{fn.name}(x, {n_bits}, ratios)")
        match = [r for r in ratios if abs(r - got) <= 1e-6]
        if not match:
            hint = ""
            if got == int(got) and 0 <= got < len(ratios):
                hint = f" — that looks like an index: return ratios[{int(got)}] = {ratios[int(got)]}, the ratio itself"
            elif any(abs(got - e) <= 1e-6 * e for e in errs.values()):
                hint = " — that is an error (MSE): return the ratio that gives the smallest one"
            raise CheckFailed(f"{n_bits}-bit: returned {got:.8g}, which is not one of the candidate ratios{hint}")
        got = match[0]
        if got != want:
            worst = max(errs, key=errs.get)
            hint = " — that is the ratio with the LARGEST error" if got == worst else ""
            g, w = _pair(errs[got], errs[want])
            raise CheckFailed(f"{n_bits}-bit: returned ratio {got} (MSE {g}); "
                              f"the best is {want} (MSE {w}){hint}")
    print(f"{'best ratios':<22} exact: True  | approx: True  | max diff: 0")
    _ok("clipping search matches qtutor")


# --- 04: outlier dimensions -----------------------------------------------------------

@_checker
def check_outlier_dims(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(x, threshold)``: sorted hidden dims where any token has ``|x| >= threshold``; x is (..., hidden)."""
    x = torch.zeros(2, 5, 8)
    x[0, 1, 3] = 6.0       # exactly at the threshold: counts (LLM.int8() uses >=)
    x[1, 4, 6] = -9.0      # negative outliers count
    x[0, 0, 1] = 5.99
    want = [3, 6]
    t = _tensor(fn(x.clone(), 6.0), f"{fn.name}(x, 6.0)")
    if t.dtype == torch.bool or (t.numel() == x.shape[-1] and set(t.flatten().tolist()) <= {0, 1}
                                 and t.flatten().tolist() != want):
        raise CheckFailed("you returned a mask over the hidden dims: return the indices of the True entries "
                          "(mask.nonzero().flatten())")
    if t.is_complex() or not _integral(t):
        raise CheckFailed(f"the dims must be integer indices, got {_describe(t.flatten().tolist())}")
    got = t.flatten().long().tolist()
    if got == [6]:
        raise CheckFailed("dim 3 holds exactly 6.0: LLM.int8() counts |x| >= threshold, not >")
    if got == [3]:
        raise CheckFailed("dim 6 holds -9.0: compare |x|, not x")
    if sorted(got) == want and got != want:
        raise CheckFailed("return the dims sorted in increasing order")
    if got != want and sorted(set(got)) == want:
        raise CheckFailed(f"got {got}: return each dim once (reduce with .any over the tokens, then .nonzero())")
    if got != want:
        raise CheckFailed(f"got {_describe(got)}, expected {want} "
                          "(x has shape (batch, seq, hidden): reduce over all but the last axis)")
    compare("outlier dims", got, want)
    _ok("outlier dimensions match")


# --- 05: SmoothQuant scales -----------------------------------------------------------------

@_checker
def check_smooth_scales(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(act_absmax (K,), w (N, K), alpha) -> s (K,)``, SmoothQuant eq. 4."""
    from .methods.smoothquant import smoothing_scales

    gen = torch.Generator().manual_seed(5)
    act = torch.rand(32, generator=gen) * 10 + 0.1
    w = torch.randn(16, 32, generator=gen)
    shown = None
    for alpha in (0.5, 0.8, 0.25):
        got = _tensor(fn(act.clone(), w.clone(), alpha), f"s = {fn.name}(act_absmax, w, {alpha})", floating=True)
        want = smoothing_scales(act, [w], alpha)
        if got.shape != want.shape:
            hint = " — reduce W over its output axis (dim 0): one value per input channel" \
                if tuple(got.shape) == (w.shape[0],) else ""
            raise CheckFailed(f"s has shape {tuple(got.shape)}: one scale per input channel, "
                              f"shape {tuple(want.shape)}{hint}")
        got = got.float()
        if torch.allclose(got, want, rtol=1e-5):
            shown = (got, want) if shown is None else shown
            continue
        if torch.allclose(got, smoothing_scales(act, [w], 1 - alpha), rtol=1e-5):
            raise CheckFailed(f"alpha={alpha}: exponents swapped — max|X|^alpha / max|W|^(1-alpha)")
        if torch.allclose(got, 1 / want, rtol=1e-5):
            raise CheckFailed(f"alpha={alpha}: you return 1 / s — s = max|X|^alpha / max|W|^(1-alpha)")
        w_max = w.amax(0).clamp(min=1e-5)
        if torch.allclose(got, act.pow(alpha) / w_max.pow(1 - alpha), rtol=1e-5):
            raise CheckFailed("use max |W| over the output dimension (abs before max)")
        if torch.allclose(got, act.pow(alpha) / w.abs().amax(1).mean().pow(1 - alpha), rtol=1e-5):
            raise CheckFailed("reduce W over its output axis (dim 0): one value per input channel")
        if torch.allclose(got, act.pow(alpha) / w.abs().amax().pow(1 - alpha), rtol=1e-5):
            raise CheckFailed("max|W| must be per input channel (amax over dim 0), not over the whole matrix")
        raise CheckFailed(f"alpha={alpha}: max diff {float((got - want).abs().max()):.3g} from qtutor's smoothing_scales")
    # a weight column of zeros (a pruned input channel): max|W| = 0 must be clamped, or s is inf
    w0 = w.clone()
    w0[:, 7] = 0.0
    got = _tensor(fn(act.clone(), w0.clone(), 0.5), f"s = {fn.name}(act_absmax, w, 0.5)", shape=(32,),
                  floating=True, finite=False).float()
    want = smoothing_scales(act, [w0], 0.5)
    if not bool(torch.isfinite(got).all()):
        raise CheckFailed("column 7 of W is all zero here, and s[7] comes out inf or NaN: clamp max|W| at 1e-5 "
                          "before dividing (w.abs().amax(dim=0).clamp(min=1e-5))")
    if not torch.allclose(got, want, rtol=1e-5):
        g, ww = _pair(float(got[7]), float(want[7]))
        raise CheckFailed(f"column 7 of W is all zero: s[7] = {g}, expected {ww} — clamp max|W| at 1e-5, "
                          "as SmoothQuant does")
    compare("scales (alpha=0.5)", *shown, rtol=1e-5)
    _ok("SmoothQuant scales match qtutor")


# --- 06: LLM.int8() decomposition ---------------------------------------------------------------

def _int8_decomposition_variant(x: torch.Tensor, w: torch.Tensor, threshold: float, strict: bool = False,
                                outliers_in_scale: bool = False) -> torch.Tensor:
    """The decomposition in float32 with one of the learners' slips (``>``, outliers setting the row scale)."""
    xf, wf = x.float(), w.float()
    is_out = xf.abs() > threshold if strict else xf.abs() >= threshold
    cols = is_out.any(0)
    masked = xf.masked_fill(is_out, 0)
    s_x = (xf if outliers_in_scale else masked).abs().amax(1).clamp(min=1e-12)
    s_w = wf.abs().amax(1)
    c_x = torch.round(masked * (127 / s_x[:, None]))
    c_x[:, cols] = 0
    c_w = torch.round(wf * (127 / s_w[:, None]))
    w_hat = (c_w * s_w[:, None] / 127).half().float()
    return (c_x @ c_w.T) * (s_x[:, None] * s_w[None, :]) / 127**2 + xf[:, cols] @ w_hat[:, cols].T


@_checker
def check_int8_decomposition(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(x (T, K) fp16, w (N, K) fp16, threshold) -> y (T, N)``, the mixed-precision decomposition."""
    from .methods.llm_int8 import llm_int8_matmul, vectorwise_quant

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, 64, generator=gen).half()
    x[:, 5] *= 12  # an outlier feature
    x[3, 40] = -7.5
    w = (torch.randn(24, 64, generator=gen) * 0.1).half()
    CB, SCB, _ = vectorwise_quant(w)
    want = llm_int8_matmul(x, CB, SCB, 6.0).float()
    got = _tensor(fn(x.clone(), w.clone(), 6.0), f"y = {fn.name}(x, w, 6.0)", shape=tuple(want.shape),
                  floating=True).float()
    tol = 0.003 * float(want.abs().max())  # fp16 rounding, not int8 error, may differ

    def near(value: torch.Tensor) -> bool:
        return float((got - value.float()).abs().max()) <= tol

    err = float((got - want).abs().max())
    if err > tol:
        if near(llm_int8_matmul(x, CB, SCB, 0.0)):
            raise CheckFailed("your result ignores the outlier columns: they must go through the 16-bit path")
        if near(x.float() @ w.float().T) and float((x.float() @ w.float().T - want).abs().max()) > tol:
            raise CheckFailed("your result equals the fp16 product: the non-outlier part must be quantized to int8")
        if near(_int8_decomposition_variant(x, w, 6.0, outliers_in_scale=True)):
            raise CheckFailed("the outliers set the row scales of x: zero them (x.masked_fill(|x| >= threshold, 0)) "
                              "before taking each row's max |x|")
        if near(x.float()[:, [5, 40]] @ w.float()[:, [5, 40]].T):
            raise CheckFailed("your result is only the 16-bit part: add the int8 product of the other columns")
        raise CheckFailed(f"max diff {err:.4g} from qtutor's llm_int8_matmul (tolerance {tol:.4g})")
    shown = (got, want, tol)
    # x[1, 9] is exactly the threshold: with `>` instead of `>=` column 9 is quantized with the others and
    # 6.0 sets row 1's scale (4x its other values), which costs 5x the tolerance
    gen = torch.Generator().manual_seed(0)
    x2 = (torch.randn(8, 64, generator=gen) * 0.5).half()
    x2[1, 9] = 6.0
    w2 = torch.randn(24, 64, generator=gen).half()
    CB2, SCB2, _ = vectorwise_quant(w2)
    want2 = llm_int8_matmul(x2, CB2, SCB2, 6.0).float()
    got2 = _tensor(fn(x2.clone(), w2.clone(), 6.0), f"y = {fn.name}(x, w, 6.0)", shape=tuple(want2.shape),
                   floating=True).float()
    tol2 = 0.003 * float(want2.abs().max())
    err2 = float((got2 - want2).abs().max())
    if err2 > tol2:
        strict = llm_int8_matmul(x2, CB2, SCB2, 6.0 + 2**-7).float()  # fp16 compares 6.0 + ε as 6.0
        if float((got2 - strict).abs().max()) <= tol2:
            raise CheckFailed("x[1, 9] is exactly 6.0, the threshold: LLM.int8() sends a column through the "
                              "16-bit path when |x| >= threshold, not > (your row 1 is off by "
                              f"{float((got2 - want2)[1].abs().max()):.3g})")
        raise CheckFailed(f"on a second input (x[1, 9] = 6.0, the threshold) max diff {err2:.4g} from qtutor's "
                          f"llm_int8_matmul (tolerance {tol2:.4g})")
    compare("y", shown[0], shown[1], atol=shown[2])
    _ok("LLM.int8() decomposition matches qtutor (within 0.3 % of max |y|)")


# --- 09: NF4 block quantization ------------------------------------------------------------

@_checker
def check_nf4_block(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(x, levels) -> codes``: one block scaled by its absmax, each value to its nearest level."""
    from .methods.nf4 import NF4Config, normal_float_levels, quantize_4bit

    levels = normal_float_levels()
    mid = (levels[:-1] + levels[1:]) / 2
    gen = torch.Generator().manual_seed(9)
    for trial in range(3):
        x = torch.randn(64, generator=gen) * (0.02 if trial else 1.0)
        state = quantize_4bit(x, NF4Config(blocksize=64, double_quant=False))
        want = torch.stack([state.packed[:, 0] >> 4, state.packed[:, 0] & 0xF], 1).reshape(-1).long()
        t = _tensor(fn(x.clone(), levels.clone()), f"codes = {fn.name}(x, levels)")
        if t.numel() != want.numel():
            raise CheckFailed(f"codes have shape {tuple(t.shape)}, expected {tuple(want.shape)}: one code per value")
        if t.dtype == torch.bool or t.is_complex() or not _integral(t):
            raise CheckFailed(f"codes hold {_describe(t.flatten()[:4].tolist())}: they must be integer indices "
                              "0..15 into the level table, not the levels' values")
        got = t.long().flatten()
        if torch.equal(got, want):
            continue
        if int(got.max()) > 15 or int(got.min()) < 0:
            raise CheckFailed("codes must be indices 0..15 into the level table, not values")
        if torch.equal(got, torch.bucketize(x / x.max(), mid)):
            raise CheckFailed("divide by the block's max |x| (absmax), not its max")
        if torch.equal(got, torch.bucketize(x, mid)):
            raise CheckFailed("scale the block first: x / max|x| lies in [-1, 1], like the levels")
        if torch.equal(got, torch.bucketize(x / x.abs().max(), levels).clamp(max=15)) or \
                torch.equal(got, torch.bucketize(x / x.abs().max(), levels, right=True).clamp(max=15)):
            raise CheckFailed("compare with the midpoints between neighbouring levels ((levels[:-1] + levels[1:]) / 2), "
                              "not with the levels: the nearest level is not always the next one up")
        if torch.equal(got, 15 - want):
            raise CheckFailed("the codes run backwards: code 0 is the most negative level, levels[0] = -1")
        n_bad = int((got != want).sum())
        raise CheckFailed(f"{n_bad} of 64 codes differ from qtutor/bitsandbytes: pick the nearest level of x / max|x|")
    compare("codes", got, want)
    _ok("NF4 block quantization matches bitsandbytes")


# --- 10: GGUF -------------------------------------------------------------------------------------

def _q8_0_variant(x, divide: bool = False, fp16_d: bool = False, half_even: bool = False):
    """Q8_0 blocks with one of the learners' slips: ``x / d``, codes from the fp16 ``d``, ``np.round``."""
    import numpy as np

    d = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    dc = d.astype(np.float16).astype(np.float32) if fp16_d else d
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(dc == 0, np.float32(0), x / dc if divide else x * np.where(dc == 0, np.float32(0), np.float32(1) / dc))
    v = v.astype(np.float32)
    q = (np.round(v) if half_even else np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)


def _reciprocal_decides(row) -> list[int]:
    """Set up to two values of a float32 block where round(x / d) and round(x · (1/d)) differ; their indices.

    The candidates are the float32 neighbours of (k + ½) · d: a quotient within an ulp of a tie.
    """
    import numpy as np

    f32 = np.float32
    amax = np.abs(row).max()
    d = f32(amax / f32(127))
    inv = f32(1) / d
    def rnd(v):
        return np.sign(v) * np.floor(np.abs(v) + f32(0.5))

    slots = [j for j in np.argsort(np.abs(row)) if np.abs(row[j]) < amax][:2]
    done: list[int] = []
    for k in range(2, 127):
        if len(done) == len(slots):
            break
        c = f32(f32(k + 0.5) * d)
        below, above = [c], [c]
        for _ in range(3):
            below.append(np.nextafter(below[-1], f32(0)))
            above.append(np.nextafter(above[-1], f32(np.inf)))
        for cand in below + above[1:]:
            cand = f32(cand)
            if abs(cand) < amax and rnd(f32(cand / d)) != rnd(f32(cand * inv)):
                j = slots[len(done)]
                row[j] = cand if k % 2 else -cand
                done.append(int(j))
                break
    return done


@_checker
def check_q8_0_encoder(fn: Callable) -> None:
    """``fn(x) -> blocks``: x (n, 32) float32 -> (n, 34) uint8 Q8_0 blocks (fp16 d, then 32 int8 codes)."""
    import numpy as np

    from .gguf import dequantize_blocks, quantize_blocks

    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x[3] = 0.0  # an all-zero block: d = 0, codes 0
    x[5] = np.clip(x[5], -1, 1)
    x[5, 0] = 127 / 4  # block max: d = 0.25 exactly
    x[5, 7] = 62.5 / 4  # x / d = 62.5, a rounding tie: roundf gives 63, round-half-to-even 62
    for r in range(8, 12):  # llama.cpp computes id = 1/d and x·id: here x / d rounds the other way
        _reciprocal_decides(x[r])
    want = quantize_blocks(x, "Q8_0")
    got = _array(fn(x.copy()), f"blocks = {fn.name}(x)")
    if got.shape != want.shape or got.dtype != np.uint8:
        hint = ""
        if got.shape == want.shape:
            hint = " — view the bytes as uint8: d.astype(np.float16).view(np.uint8), q.view(np.uint8)"
        elif got.shape == (want.shape[0], 33):
            hint = " — d takes 2 bytes (float16), then 32 codes"
        raise CheckFailed(f"blocks must be uint8 of shape {want.shape}, got {got.dtype} {got.shape}{hint}")
    if np.array_equal(got, want):
        compare("Q8_0 bytes", torch.from_numpy(got.astype(np.int64)), torch.from_numpy(want.astype(np.int64)))
        _ok("Q8_0 encoder is byte-identical with qtutor (and so with llama.cpp and gguf-py)")
        return
    if not np.array_equal(got[:, :2], want[:, :2]):
        if np.array_equal(got[:, 32:], want[:, :2]):
            raise CheckFailed("d must come first: bytes 0-1 hold d as float16, then the 32 codes")
        if np.array_equal(got[:, :2], want[:, :2][:, ::-1]):
            raise CheckFailed("the two bytes of d are swapped: GGUF is little-endian, as .view(np.uint8) gives them")
        raise CheckFailed("the scale bytes differ: d = max|x| / 127, stored as float16 (x.astype(np.float16).view(np.uint8))")
    bad = {int(b) for b in np.nonzero((got != want).any(axis=1))[0]}
    reciprocal = {int(b) for b in np.nonzero((_q8_0_variant(x, divide=True) != want).any(axis=1))[0]}
    if 3 in bad:
        raise CheckFailed("the all-zero block is wrong: with d = 0 use 1/d = 0, so every code is 0")
    division = ("llama.cpp computes id = 1/d once and multiplies, x · id; x / d rounds differently in blocks "
                f"{sorted(reciprocal)}, and byte identity depends on it")
    tie = ("a rounding tie went the wrong way: llama.cpp uses roundf (halves away from zero), "
           "not np.round (halves to even)")
    if bad <= reciprocal:
        raise CheckFailed(division)
    if bad == {5}:
        raise CheckFailed(tie)
    if bad <= reciprocal | {5}:
        raise CheckFailed(f"two things: {tie}; and {division}")
    if np.array_equal(got, _q8_0_variant(x, fp16_d=True)) or np.array_equal(got, _q8_0_variant(x, True, True)):
        raise CheckFailed("compute the codes with the float32 d = max|x| / 127; only the stored copy is float16")
    back = dequantize_blocks(got, "Q8_0")
    raise CheckFailed(f"{len(bad)} blocks differ; your blocks decode to max error "
                      f"{float(np.abs(back - x).max()):.3g} — codes are round(x · (1/d)) as int8")


@_checker
def check_k4_scale_packing(fn: Callable) -> None:
    """``fn(ls, lm) -> packed``: eight 6-bit scales and mins per super-block (n, 8) -> 12 bytes (n, 12)."""
    import numpy as np

    from .gguf import pack_scales_k4, unpack_scales_k4

    rng = np.random.default_rng(12)
    ls, lm = rng.integers(0, 64, (32, 8)).astype(np.uint8), rng.integers(0, 64, (32, 8)).astype(np.uint8)
    want = pack_scales_k4(ls, lm)
    got = _array(fn(ls.copy(), lm.copy()), f"packed = {fn.name}(ls, lm)")
    if got.shape != want.shape:
        raise CheckFailed(f"packed must have shape {want.shape} (12 bytes per super-block), got {got.shape}")
    if got.dtype.kind == "f":
        fractions = " with fractions" if not np.array_equal(got, np.round(got)) else ""
        raise CheckFailed(f"packed has dtype {got.dtype}{fractions}: return bytes (np.uint8), as GGUF stores them")
    if got.dtype.kind == "b" or int(got.min()) < 0 or int(got.max()) > 255:
        raise CheckFailed(f"packed holds values from {int(got.min())} to {int(got.max())}: each entry is one byte, "
                          "0..255 — mask with & 0xFF (or & 63, & 0xF) before combining, or work in np.uint8")
    got = got.astype(np.uint8)
    if np.array_equal(got, want):
        compare("packed scales", torch.from_numpy(got.astype(np.int64)), torch.from_numpy(want.astype(np.int64)))
        _ok("6-bit scale packing matches llama.cpp's get_scale_min_k4")
        return
    sc, mn = unpack_scales_k4(got)
    if np.array_equal(sc, lm) and np.array_equal(mn, ls):
        raise CheckFailed("scales and mins are swapped: bytes 0-3 start with the scales, bytes 4-7 with the mins")
    nibbles = want.copy()
    nibbles[:, 8:12] = (lm[:, 4:] & 0xF) | ((ls[:, 4:] & 0xF) << 4)
    if np.array_equal(got, nibbles):
        raise CheckFailed("bytes 8-11: the scale's low 4 bits go in the low nibble, the min's in the high nibble")
    if np.array_equal(sc[:, :4], ls[:, :4]) and not np.array_equal(sc[:, 4:], ls[:, 4:]):
        raise CheckFailed("sub-blocks 4-7 are wrong: their low 4 bits go to bytes 8-11 (scale low nibble, min high "
                          "nibble) and their top 2 bits to bits 6-7 of bytes 0-3 (scales) and 4-7 (mins)")
    if np.array_equal(sc, ls) and not np.array_equal(mn, lm):
        raise CheckFailed("the scales are right, the mins wrong: min j goes to the low 6 bits of byte j + 4 "
                          "(j < 4); mins 4-7 to the high nibbles of bytes 8-11 and bits 6-7 of bytes 4-7")
    raise CheckFailed("sub-blocks 0-3 are wrong: scale j goes to the low 6 bits of byte j, min j of byte j + 4")


# --- 07: GPTQ's column update ---------------------------------------------------------

def _gptq_step_result(fn: Callable, W1: torch.Tensor, Hinv1: torch.Tensor, i: int, scale: torch.Tensor,
                      zero: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's ``(q, err)`` for column ``i``, checked for type and shape."""
    rows = W1.shape[0]
    q, err = _parts(fn(W1, Hinv1, i, scale.clone(), zero.clone(), maxq), 2, f"{fn.name}(W1, Hinv1, {i}, …)",
                    "(q, err)")
    q = _tensor(q, f"q (column {i})", floating=True)
    err = _tensor(err, f"err (column {i})", floating=True)
    for name, t in (("q", q), ("err", err)):
        if t.numel() != rows:
            raise CheckFailed(f"{name} (column {i}) has shape {tuple(t.shape)}, expected ({rows},): "
                              f"one value per row of W1, for column {i} only")
    return q.reshape(rows).float(), err.reshape(rows).float()


def _gptq_with_step(step: Callable, W: torch.Tensor, Hinv: torch.Tensor, scale: torch.Tensor,
                    zero: torch.Tensor, maxq: int, blocksize: int = 16) -> torch.Tensor:
    """GPTQ's lazy-batch loop (per-row grid) with the learner's column step inside."""
    W = W.clone()
    Q = torch.zeros_like(W)
    columns = W.shape[1]
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, Err1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1)
        for i in range(i2 - i1):
            q, err = _gptq_step_result(step, W1, Hinv[i1:i2, i1:i2].clone(), i, scale, zero, maxq)
            Q[:, i1 + i], Err1[:, i] = q, err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q


@_checker
def check_gptq_column_step(fn: Callable) -> None:
    """``fn(W1, Hinv1, i, scale, zero, maxq) -> (q, err)``: quantize column i, update W1[:, i:] in place."""
    from .methods.gptq import GPTQ, GPTQConfig, gptq_fake_quant, gptq_grid_params

    gen = torch.Generator().manual_seed(7)
    W = torch.randn(24, 48, generator=gen)
    X = torch.randn(400, 48, generator=gen) * torch.linspace(0.2, 3.0, 48)
    g = GPTQ(W)
    g.add_batch(X)
    want = g.quantize(GPTQConfig(n_bits=3, group_size=None, blocksize=16)).dequantize()
    H = g.H.clone()
    H[range(48), range(48)] += 0.01 * torch.diag(H).mean()
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    scale, zero = (t[:, 0] for t in gptq_grid_params(W, 3, False))

    # one step on column 0, compared with what it must do
    probe = W[:, :16].clone()
    q0, err0 = _gptq_step_result(fn, probe, Hinv[:16, :16].clone(), 0, scale, zero, 7)
    want_q0 = gptq_fake_quant(W[:, 0], scale, zero, 3)
    want_err0 = (W[:, 0] - want_q0) / Hinv[0, 0]
    codes0 = q0 / scale + zero
    if not torch.allclose(codes0, codes0.round(), atol=1e-3):
        raise CheckFailed("q is not on the grid: return the dequantized value scale · (code − zero), not w or a code")
    if not torch.allclose(q0, want_q0, atol=1e-5):
        raise CheckFailed(f"q of column 0 differs from scale · (clamp(round(w / scale) + zero, 0, maxq) − zero) in "
                          f"{int((q0 - want_q0).abs().gt(1e-5).sum())} of {W.shape[0]} rows")
    if torch.allclose(err0, -want_err0, atol=1e-5):
        raise CheckFailed("err has the wrong sign: err = (w − q) / Hinv1[i, i], and W1[:, i:] -= err ⊗ Hinv1[i, i:]")
    if torch.allclose(err0, want_err0 * Hinv[0, 0], atol=1e-5):
        raise CheckFailed("err must be divided by Hinv1[i, i]: err = (w − q) / Hinv1[i, i]")
    if not torch.allclose(err0, want_err0, atol=1e-4, rtol=1e-4):
        raise CheckFailed("err of column 0 is wrong: err = (w − q) / Hinv1[i, i], with w the column before rounding")
    if torch.equal(probe[:, 1:], W[:, 1:16]) and not torch.equal(probe[:, 0], W[:, 0]):
        raise CheckFailed("only column i of W1 changed: subtract err ⊗ Hinv1[i, i:], row i of the upper Cholesky "
                          "factor (its column i, Hinv1[i:, i], is zero below the diagonal)")
    if torch.equal(probe[:, 1:], W[:, 1:16]):
        raise CheckFailed("W1's later columns did not change, so each column is rounded on its own, as "
                          "round-to-nearest: spread the error of column i over columns i+1… of W1 in place "
                          "(W1[:, i:] -= err ⊗ Hinv1[i, i:])")
    want_probe = W[:, :16] - torch.outer(want_err0, Hinv[0, :16])
    if not torch.allclose(probe[:, 1:], want_probe[:, 1:], atol=1e-4):
        if torch.allclose(probe[:, 1:], (W[:, :16] - torch.outer(want_err0, Hinv[:16, 0]))[:, 1:], atol=1e-4):
            raise CheckFailed("use row i of the upper Cholesky factor, Hinv1[i, i:], not column i (Hinv1[i:, i])")
        raise CheckFailed("after column 0, W1[:, 1:] should be W1[:, 1:] − err ⊗ Hinv1[0, 1:] "
                          f"(max diff {float((probe[:, 1:] - want_probe[:, 1:]).abs().max()):.3g})")

    # a grid that covers only a quarter of each row's range, as a group's grid after earlier updates may
    # not cover its later columns: the codes must still stay in [0, maxq]
    narrow_scale, narrow_zero = (t[:, 0] for t in gptq_grid_params(W * 0.25, 3, False))
    q1, _ = _gptq_step_result(fn, W[:, :16].clone(), Hinv[:16, :16].clone(), 0, narrow_scale, narrow_zero, 7)
    codes1 = q1 / narrow_scale + narrow_zero
    if float(codes1.max()) > 7 + 1e-3 or float(codes1.min()) < -1e-3:
        raise CheckFailed(f"with a grid narrower than the column, your codes span [{float(codes1.min()):.4g}, "
                          f"{float(codes1.max()):.4g}]: clamp round(w / scale) + zero to [0, maxq] (GPTQ's updates "
                          "push later columns outside the grid)")

    got = _gptq_with_step(fn, W, Hinv, scale, zero, 7)
    rtn = gptq_fake_quant(W, scale.unsqueeze(1), zero.unsqueeze(1), 3)
    codes = got / scale.unsqueeze(1) + zero.unsqueeze(1)
    if not torch.allclose(codes, codes.round(), atol=1e-3):
        raise CheckFailed("q is not on the grid: return the dequantized value scale · (code − zero), not w or a code")
    if torch.allclose(got, rtn):
        raise CheckFailed("you get round-to-nearest: the error of column i must be spread over columns i+1… "
                          "of W1 (W1[:, i:] -= err ⊗ Hinv1[i, i:])")
    if not torch.allclose(got, want, atol=1e-5):
        err_x = ((X @ (W - got).T) ** 2).sum() / ((X @ (W - want).T) ** 2).sum()
        raise CheckFailed(f"q differs from GPTQ's in {int((got - want).abs().gt(1e-5).sum())} places "
                          f"(output error {float(err_x):.4g}× GPTQ's): divide the error by Hinv1[i, i] and "
                          "subtract err ⊗ Hinv1[i, i:] — the row of the upper Cholesky factor")
    compare("GPTQ weights", got, want, atol=1e-5)
    _ok("column update matches qtutor's GPTQ")


# --- 08: AWQ's scale search -------------------------------------------------------------

@_checker
def check_awq_scale_search(fn: Callable) -> None:
    """``fn(linear, x, n_bits, group_size, n_grid) -> (best_ratio, scales)``, judged on ``linear(x)``."""
    import copy

    from torch import nn

    from .methods.awq import search_scales

    n_grid = 20
    grid = [i / n_grid for i in range(n_grid)]  # the reference's ratios: 0, 0.05, …, 0.95 — not 1.0
    cases = []
    gen = torch.Generator().manual_seed(11)
    lin = nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=gen) * 0.05)
    x = torch.randn(256, 128, generator=gen)
    x[:, [3, 40, 77]] *= 25  # salient input channels
    cases.append((lin, x))
    # channel magnitudes spread over e^±9: here α = 1.0 would beat every ratio of the grid (loss 90.8 vs 97.1
    # at 0.95), so a grid that includes 1.0 picks a different ratio
    gen = torch.Generator().manual_seed(27)
    lin = nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=gen) * 0.05)
    mag = torch.exp(torch.randn(128, generator=gen) * 3)
    cases.append((lin, torch.randn(256, 128, generator=gen) * mag))

    shown = None
    for case, (lin, x) in enumerate(cases):
        want_s, want_ratio, _ = search_scales(lin, [lin], x, 3, 32, n_grid)
        learner = copy.deepcopy(lin)
        try:
            out = fn(learner, x.clone(), 3, 32, n_grid)
        except CheckFailed as exc:
            if "requires grad" in str(exc):
                raise CheckFailed(f"{exc} — put @torch.no_grad() above `def {fn.name}`: the weight is a "
                                  "parameter, and autograd forbids changing it in place") from None
            if "NaN" in str(exc):
                raise CheckFailed(f"{exc} — are the scales NaN? s = mean |x| ^ α needs the abs: a negative mean "
                                  "to a fractional power is NaN") from None
            raise
        ratio, s = _parts(out, 2, f"{fn.name}(linear, x, 3, 32, {n_grid})", "(best_ratio, scales)")
        if ratio is None or s is None:
            raise CheckFailed("the best ratio or scales came back None: did every loss compare as NaN "
                              "(s = mean |x| ^ α must use |x|), or does the `best` update never run?")
        with torch.no_grad():
            if not torch.equal(learner.weight, lin.weight):
                raise CheckFailed("the linear's weight changed: restore it after trying each ratio")
        ratio = _number(ratio, "best_ratio")
        s = _tensor(s, "scales", floating=True)
        if s.shape != want_s.shape:
            raise CheckFailed(f"scales have shape {tuple(s.shape)}, expected {tuple(want_s.shape)}: "
                              "one per input channel (mean |x| over the tokens, dim 0)")
        s = s.float()
        if abs(ratio - want_ratio) > 1e-9:
            if all(abs(ratio - r) > 1e-9 for r in grid):
                if ratio == int(ratio) and 1 < ratio < n_grid:
                    raise CheckFailed(f"best ratio {ratio:g}: that is the index i; return the ratio α = i / n_grid")
                raise CheckFailed(f"best ratio {ratio!r} is not on the reference's grid: α = i / n_grid for i in "
                                  f"range(n_grid), i.e. 0, 0.05, …, 0.95 — 1.0 is not tried "
                                  f"(here the best is {want_ratio})")
            hint = (" (α = 0 is plain round-to-nearest: are the scales built from mean |x|, with the abs, applied "
                    "before quantizing and undone after?)") if ratio == 0.0 else ""
            raise CheckFailed(f"best ratio {ratio!r}, expected {want_ratio}{hint}")
        if torch.allclose(s, x.abs().mean(0).pow(want_ratio)) and not torch.allclose(s, want_s):
            raise CheckFailed("scales not normalised: divide s by sqrt(max(s) · min(s))")
        if not torch.allclose(s, want_s, rtol=1e-5):
            raise CheckFailed("scales differ: s = mean|x|^α per input channel (clamped at 1e-4), then normalised")
        shown = (s, want_s, want_ratio) if shown is None else shown
    compare("AWQ scales", shown[0], shown[1], rtol=1e-5)
    _ok(f"scale search matches qtutor (α = {shown[2]})")


# --- 11: a dequantize-GEMV in Triton --------------------------------------------------

@_checker
def check_dequant_gemv(fn: Callable) -> None:
    """``fn(x (K,) fp32, qweight, qzeros, scales fp32, group_size) -> y (N,)``: the 4-bit GPTQ-v2 GEMV."""
    from .formats.layouts import pack_gptq
    from .primitives.grid import rtn_grid_quantize

    gen = torch.Generator().manual_seed(5)
    K, N, gs = 96, 48, 32
    qw = rtn_grid_quantize(torch.randn(N, K, generator=gen), 4, gs)
    p = pack_gptq(qw, version=2)
    scales = qw.scale.T.contiguous()  # (n_groups, N) float32
    x = torch.randn(K, generator=gen)
    want = qw.dequantize() @ x
    got = _tensor(fn(x, p["qweight"], p["qzeros"], scales, gs), f"y = {fn.name}(x, qweight, qzeros, scales, {gs})",
                  floating=True)
    if got.numel() != want.numel():
        raise CheckFailed(f"y has shape {tuple(got.shape)}, expected {tuple(want.shape)}: one value per output column")
    got = got.float().flatten()
    q = qw.q.float()
    g = qw.g_idx.long()
    zero = qw.zero.float()[:, g]
    wrong = {
        "the codes are read from the wrong nibbles: row k sits at bits 4·(k % 8) of word k // 8, lowest first":
            (qw.scale[:, g] * (q.reshape(N, -1, 8).flip(-1).reshape(N, K) - zero)) @ x,
        "the zero-point is not subtracted: w = scale · (q − zero)": (qw.scale[:, g] * q) @ x,
        "the scale is missing: w = scale · (q − zero)": (q - zero) @ x,
        "the zero-point is off by one: GPTQ v2 stores the zero-point itself (v1 stored zero − 1)":
            (qw.scale[:, g] * (q - zero - 1)) @ x,
        "the zero-point is off by one: GPTQ v2 stores the zero-point itself, add nothing":
            (qw.scale[:, g] * (q - zero + 1)) @ x,
        "row k belongs to group k // group_size (consecutive rows share a scale and zero-point)":
            (qw.scale[:, torch.arange(K) % (K // gs)] * (q - qw.zero.float()[:, torch.arange(K) % (K // gs)])) @ x,
    }
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        for hint, value in wrong.items():
            if torch.allclose(got, value, rtol=1e-4, atol=1e-4):
                raise CheckFailed(hint)
        raise CheckFailed(f"y differs from the reference by up to {float((got - want).abs().max()):.4g}")
    # one digit: the reference's float32 matmul differs in its last bits between CPUs' code paths (AVX2: 2.86e-06,
    # AVX-512: 3.34e-06 on one test case), and the notebook's stored output must match on either
    compare("dequant-GEMV", got, want, rtol=1e-4, atol=1e-4, digits=1)
    _ok("unpack-and-scale matches the reference")


# --- notebook 12 ---

__all__ += ["check_scheme_bits"]


@_checker
def check_scheme_bits(fn: Callable) -> None:
    """``fn(out_features, in_features, n_bits, group_size) -> int``: codes + fp16 scale + n_bits zero-point per group."""
    cases = [(576, 576, 4, 128), (1536, 576, 3, 64), (576, 1536, 2, 32), (192, 576, 8, None), (576, 1536, 4, 128),
             (576, 576, 3, 128), (100, 200, 5, 64)]

    def groups(i, g, ceil=True):
        return (-(-i // g) if ceil else i // g) if g else 1

    def right(o, i, b, g):
        return o * (b * i + groups(i, g) * (16 + b))

    wrong = {  # the counts learners write, each told apart from the others by some case above
        "a short last group still needs a scale and a zero-point: 576 inputs in groups of 128 are ceil(576 / 128) = 5 "
        "groups, not 4": lambda o, i, b, g: o * (b * i + groups(i, g, ceil=False) * (16 + b)),
        "you left out the zero-points: each group stores one, n_bits wide": lambda o, i, b, g: o * (b * i + groups(i, g) * 16),
        "the scales are fp16: 16 bits each, not 32": lambda o, i, b, g: o * (b * i + groups(i, g) * (32 + b)),
        "the zero-point is n_bits wide (an integer on the grid), not 16 bits":
            lambda o, i, b, g: o * (b * i + groups(i, g) * 32),
        "that is bits per weight: return the total number of bits of the whole matrix":
            lambda o, i, b, g: right(o, i, b, g) / (o * i),
        "that is bytes: return bits": lambda o, i, b, g: right(o, i, b, g) / 8,
        "only the codes: add a 16-bit scale and an n_bits zero-point per group": lambda o, i, b, g: o * b * i,
    }
    got = []
    for out_f, in_f, b, g in cases:
        what = f"{fn.name}({out_f}, {in_f}, {b}, {g})"
        value = fn(out_f, in_f, b, g)
        if value is None:
            raise CheckFailed(f"{what} returned None: did you forget the return?")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckFailed(f"{what} returned a {type(value).__name__} ({_describe(value)}): return a number of bits")
        got.append((what, value, right(out_f, in_f, b, g)))
    if all(v == w for _, v, w in got):
        _ok("exact storage: codes, an fp16 scale and an n_bits zero-point per group, short last group included")
        return
    for hint, formula in wrong.items():
        if all(abs(v - formula(*case)) < 1e-9 * max(1.0, abs(v)) for (_, v, _), case in zip(got, cases)):
            raise CheckFailed(hint)
    what, value, want = next(x for x in got if x[1] != x[2])
    raise CheckFailed(f"{what} = {value}, expected {want} bits: codes, plus per group an fp16 scale and an "
                      "n_bits zero-point")


# --- notebook 13 ---

@_checker
def check_imatrix_accumulation(fn: Callable) -> None:
    """``fn(x (n_tokens, in_features)) -> (in_features,)``: the mean over tokens of x², per input column."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(40, 24, generator=gen) * torch.linspace(0.1, 3.0, 24)  # columns of different scales
    x[:, 5] += 2.0  # a column with a non-zero mean: mean(x)² and mean(x²) differ there
    want = (x.double() ** 2).mean(dim=0)
    got = _tensor(fn(x), f"{fn.name}(x) for x of shape (40, 24)", floating=True).double()
    wrong = {
        "you averaged over the columns (axis 1): average over the tokens (axis 0), one value per input column":
            (x.double() ** 2).mean(dim=1),
        "you averaged |x|: the importance is the mean of x², the squares": x.double().abs().mean(dim=0),
        "you summed over the tokens: divide by the number of tokens (llama-quantize divides in_sum2 by counts)":
            (x.double() ** 2).sum(dim=0),
        "you took the square root (the RMS): the importance is the mean of x² itself": (x.double() ** 2).mean(dim=0).sqrt(),
        "you squared the mean: the importance is the mean of the squares, mean(x²), not mean(x)²":
            x.double().mean(dim=0) ** 2,
    }
    for hint, value in wrong.items():
        if got.shape == value.shape and torch.allclose(got, value, rtol=1e-5, atol=1e-8) \
                and (value.shape != want.shape or not torch.allclose(value, want, rtol=1e-5, atol=1e-8)):
            raise CheckFailed(hint)
    if got.shape != want.shape:
        raise CheckFailed(f"the result has shape {tuple(got.shape)}, expected {tuple(want.shape)}: one importance per input column")
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-8):
        raise CheckFailed(f"the importances differ from mean(x², over tokens) by up to {float((got - want).abs().max()):.3g}")
    compare("imatrix", got, want, rtol=1e-5, atol=1e-8)
    _ok("the mean of x² over tokens, per input column, as llama.cpp's imatrix")


# --- notebook 14 ---

__all__ += ["check_bisection_step"]


@_checker
def check_bisection_step(fn: Callable) -> None:
    """``fn(layers, evaluate, threshold) -> list``: one bisection step, first half ``layers[:n // 2]`` tested."""
    names = [f"layer{i}" for i in range(7)]
    for n, culprit in [(7, 2), (7, 3), (7, 6), (6, 0), (6, 5), (2, 1), (3, 1)]:
        layers = names[:n]
        calls: list[tuple] = []

        def evaluate(subset, culprit=layers[culprit]):
            subset = tuple(subset)
            calls.append(subset)
            return 2.0 if culprit in subset else 1.0

        got = fn(list(layers), evaluate, 1.5)
        if not isinstance(got, (list, tuple)):
            raise CheckFailed(f"{fn.name} returned a {type(got).__name__}: return the half, a list of layer names")
        got, first, second = list(got), layers[: n // 2], layers[n // 2:]
        want = first if culprit < n // 2 else second
        if got == want:
            if len(calls) > 1:
                raise CheckFailed(f"{len(calls)} evaluations for one step: test the first half only — if it is clean, "
                                  "the culprit is in the other half, no need to test it")
            if calls and list(calls[0]) != first:
                raise CheckFailed(f"tested {list(calls[0])}: the step tests the first half, layers[:n // 2]")
            continue
        if not calls:
            raise CheckFailed("evaluate was never called: test the first half with evaluate(first_half)")
        if got in (layers[: (n + 1) // 2], layers[(n + 1) // 2:]) and n % 2:
            raise CheckFailed(f"with {n} layers the split is off by one: the first half is layers[:n // 2] "
                              f"({n // 2} layers), the second layers[n // 2:]")
        if got == (second if want == first else first):
            raise CheckFailed(f"culprit at position {culprit} of {n}: returned the wrong half — the metric above the "
                              "threshold means the culprit is in the half you tested")
        raise CheckFailed(f"returned {got} for {n} layers with the culprit at position {culprit}; expected {want}")
    _ok("bisection step matches qtutor (first half tested, culprit's half returned)")


# --- 15: KV cache ----------------------------------------------------------------

def _keys_per_token_variant(k: torch.Tensor, n_bits: int, group_size: int) -> torch.Tensor:
    """The common slip: groups of channels within each token (the values' grouping) instead of tokens per channel."""
    from . import exercises

    return exercises.fake_quant_keys(k.transpose(2, 3), n_bits, group_size).transpose(2, 3)


@_checker
def check_fake_quant_keys(fn: Callable) -> None:
    """``fn(k, n_bits, group_size) -> k_hat``: asymmetric, per channel over groups of ``group_size`` tokens."""
    from . import exercises

    gen = torch.Generator().manual_seed(15)
    k = torch.randn(2, 3, 64, 32, generator=gen)
    k[..., 5] = k[..., 5] * 10 + 20  # an outlier channel, far from zero, as real keys have
    k[0, 0, 16:32, 7] = 1.5  # a constant group: its scale is 0, which must not become NaN
    for n_bits, gs in ((4, 16), (2, 32), (8, 64)):
        call = f"{fn.name}(k, {n_bits}, {gs})"
        got = _tensor(fn(k.clone(), n_bits, gs), call, floating=True, finite=False)
        if got.shape != k.shape:
            raise CheckFailed(f"{call} has shape {tuple(got.shape)}: reshape back to {tuple(k.shape)}")
        got = got.float()
        if not bool(torch.isfinite(got).all()):
            raise CheckFailed(f"{call} holds NaN or inf — one group of channel 7 is constant, so max − min = 0: "
                              "use scale 1 where it is 0")
        want = exercises.fake_quant_keys(k, n_bits, gs)
        if torch.allclose(got, want, atol=1e-4):
            continue
        qmax = 2**n_bits - 1
        if torch.allclose(got, _keys_per_token_variant(k, n_bits, gs), atol=1e-4):
            raise CheckFailed(f"{n_bits}-bit g{gs}: you grouped channels within each token (how KIVI does values); "
                              "keys take min and max over group_size tokens of each channel: reduce over the token axis")
        whole = exercises.fake_quant_keys(k, n_bits, k.shape[2])
        if gs != k.shape[2] and torch.allclose(got, whole, atol=1e-4):
            raise CheckFailed(f"{n_bits}-bit g{gs}: one scale per channel over all {k.shape[2]} tokens — split the "
                              f"tokens into groups of {gs} first: reshape to (B, H, T // {gs}, {gs}, D)")
        sym = k.reshape(2, 3, -1, gs, 32)
        s = sym.abs().amax(3, keepdim=True) / (2 ** (n_bits - 1) - 1 if n_bits > 1 else 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        sym = (torch.round(sym / s).clamp(-(2 ** (n_bits - 1) - 1), 2 ** (n_bits - 1) - 1) * s).reshape(k.shape)
        if torch.allclose(got, sym, atol=1e-4):
            raise CheckFailed(f"{n_bits}-bit g{gs}: that is symmetric quantization — KIVI stores min and scale, "
                              f"codes 0 … {qmax}: scale = (max − min) / {qmax}, x̂ = code · scale + min")
        g = k.reshape(2, 3, -1, gs, 32)
        lo, hi = g.amin(3, keepdim=True), g.amax(3, keepdim=True)
        s2 = (hi - lo) / 2**n_bits
        s2 = torch.where(s2 > 0, s2, torch.ones_like(s2))
        wrong = (torch.clamp(torch.round((g - lo) / s2), 0, qmax) * s2 + lo).reshape(k.shape)
        if torch.allclose(got, wrong, atol=1e-4):
            raise CheckFailed(f"{n_bits}-bit g{gs}: you divided by 2**n_bits = {2**n_bits}; {n_bits}-bit codes go "
                              f"from 0 to {qmax}, so scale = (max − min) / {qmax}")
        err = float((got - want).abs().max())
        raise CheckFailed(f"{n_bits}-bit g{gs}: k_hat differs from qtutor's by up to {err:.3g}; codes "
                          f"round((k − min) / scale) clamped to 0 … {qmax}, min and max per channel per token group")
    _ok("key quantization matches qtutor (per channel over token groups, asymmetric, 2/4/8 bits)")


# --- 16: FP8 --------------------------------------------------------------------

def _every_bf16_value() -> torch.Tensor:
    """Every finite bfloat16 value as float32 (65,280 of them): zeros, subnormals, ties of E4M3, overflow."""
    b = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return b[torch.isfinite(b)]


@_checker
def check_round_to_e4m3(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``fn(x) -> x̂``: nearest E4M3 value, ties to even, subnormals below 2⁻⁶, saturating at ±448."""
    x = _every_bf16_value()
    call = f"{fn.name}(x)"
    got = _tensor(fn(x.clone()), call, floating=True, finite=False)
    if got.shape != x.shape:
        raise CheckFailed(f"{call} has shape {tuple(got.shape)}: return one value per element, shape {tuple(x.shape)}")
    got = got.float()
    want = x.to(torch.float8_e4m3fn).float()  # torch's cast: the reference the course matches bit for bit
    bad = ~((got == want) | (torch.isnan(got) & torch.isnan(want)))
    if not bool(bad.any()):
        _ok("round_to_e4m3 equals torch's float8_e4m3fn cast on all 65,280 finite bfloat16 values")
        return
    a = x.abs()
    if bool(torch.isnan(got[x == 0]).any()):
        raise CheckFailed("x = 0 gives NaN: log2(0) is −inf, so its step is 0 and 0/0 = NaN — clamp |x| to at least "
                          "2**-6 before taking log2 (zero and the subnormals share the step 2**-9)")
    if bool(torch.isnan(got).any() | torch.isinf(got).any()):
        i = int((torch.isnan(got) | torch.isinf(got)).nonzero()[0])
        raise CheckFailed(f"{fn.name} gives {float(got[i])} for x = {float(x[i]):.6g}: E4M3 has no inf and saturates "
                          "at ±448")
    if bool((bad <= (a > 448)).all()):
        i = int(bad.nonzero()[0])
        raise CheckFailed(f"x = {float(x[i]):.6g} gives {float(got[i]):.6g}: above 448 the 'fn' variant saturates — "
                          "clamp the result to [−448, 448]")
    if bool((bad <= (a < 2.0**-6)).all()):
        i = int(bad.nonzero()[0])
        raise CheckFailed(f"x = {float(x[i]):.3g} gives {float(got[i]):.3g}, E4M3 gives {float(want[i]):.3g}: below "
                          "2**-6 E4M3 has subnormals with the fixed step 2**-9 — clamp |x| to at least 2**-6 before "
                          "taking the exponent")
    e = torch.floor(torch.log2(a.clamp(min=2.0**-6)))
    step = torch.exp2(e - 3)
    tie = (x / step - torch.floor(x / step)) == 0.5
    if bool((bad <= tie).all()):
        raise CheckFailed("only exact halfway values differ: round them to the even neighbour (torch.round does), not "
                          "away from zero")
    trunc = (torch.trunc(x / step) * step).clamp(-448, 448)
    if bool(((got == trunc) | ~bad).all()):
        raise CheckFailed("your values are truncated toward zero: round to the nearest grid point (torch.round)")
    wide = (torch.round(x / torch.exp2(e - 2)) * torch.exp2(e - 2)).clamp(-448, 448)
    if bool(((got == wide) | ~bad).all()):
        raise CheckFailed("your grid is too coarse: E4M3 keeps 3 mantissa bits, so the step in [2**e, 2**(e+1)) is "
                          "2**(e-3), not 2**(e-2) (that is E5M2's)")
    i = int(bad.nonzero()[0])
    raise CheckFailed(f"{int(bad.sum())} of {x.numel()} values differ, e.g. x = {float(x[i]):.6g} gives "
                      f"{float(got[i]):.6g}, E4M3 gives {float(want[i]):.6g}: step 2**(floor(log2|x|) − 3), "
                      "|x| clamped to ≥ 2**-6, round half to even, clamp to ±448")


# --- 17: QAT ---------------------------------------------------------------------

@_checker
def check_fake_quant_clipped_ste(fn: Callable) -> None:
    """``fn(x, scale, n_bits) -> x̂``: the fake-quantized values forward, the clipped STE backward."""
    from . import exercises

    x0 = torch.tensor([-9.0, -3.6, -0.26, 0.0, 0.74, 1.45, 2.49, 3.4, 3.6, 12.0])  # none exactly on ±q_max·s
    s = torch.tensor(0.5)
    for n_bits in (4, 3):
        call = f"{fn.name}(x, scale=0.5, n_bits={n_bits})"
        x = x0.clone().requires_grad_(True)
        out = fn(x, s, n_bits)
        got = _tensor(out, call, floating=True)
        want = exercises.fake_quant_clipped_ste(x0, s, n_bits)
        if got.shape != x0.shape:
            raise CheckFailed(f"{call} has shape {tuple(got.shape)}: return one value per element")
        q_max = 2 ** (n_bits - 1) - 1
        if not torch.allclose(got.float(), want, atol=1e-6):
            if torch.allclose(got.float(), want / s, atol=1e-6):
                raise CheckFailed(f"{call} returns the integer codes: multiply them by scale to get values back")
            if torch.allclose(got.float(), torch.round(x0 / s) * s, atol=1e-6):
                raise CheckFailed(f"{call} does not clamp: codes beyond ±{q_max} must be clipped to ±{q_max}")
            i = int((got.float() - want).abs().argmax())
            raise CheckFailed(f"{call}: x = {float(x0[i])} gives {float(got[i]):.4g}, expected {float(want[i]):.4g} "
                              f"(s · clamp(round(x / s), −{q_max}, {q_max}))")
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            raise CheckFailed("the result has no gradient: torch.round has zero gradient almost everywhere and "
                              "breaks the graph — keep x in the graph and add the rounding error as a detached "
                              "constant (x + (q − x).detach())")
        out.sum().backward()
        g = x.grad if x.grad is not None else torch.zeros_like(x0)
        inside = ((x0 / s).abs() <= q_max).float()
        if torch.equal(g, torch.ones_like(g)):
            raise CheckFailed(f"every element gets gradient 1, the clipped ones too (x = −9, 12 with n_bits={n_bits}): "
                              "that is the plain STE — a clipped value no longer moves with x, so its gradient is 0 "
                              "(clamp x to the range before adding the detached rounding error)")
        if torch.equal(g, torch.zeros_like(g)):
            raise CheckFailed("the gradient is 0 everywhere: round's own gradient leaked through — detach the "
                              "rounding error, x + (q − x).detach()")
        if not torch.equal(g, inside):
            raise CheckFailed(f"gradients {g.tolist()} with n_bits={n_bits}; expected 1 where |x / s| ≤ {q_max} "
                              f"and 0 where clipped: {inside.tolist()}")
    _ok("fake quantization forward, clipped straight-through gradient backward")


# --- 18: the capstone ----------------------------------------------------------

CAPSTONE_TIME_LIMIT_S = 300.0  # two CPU cores: RTN mixes take seconds, GPTQ on every layer about 30 s, AWQ about 2 min


@_checker
def check_capstone_solution(fn: Callable, model, tokenizer, reference, budget) -> dict:
    """Exercise 18.1: ``fn(model, tokenizer, budget)`` returns a quantized model within ``budget`` on held-out text.

    ``fn`` gets a copy of ``model`` (the float model stays as it is for the next try). Returns the judge's
    ``{'mb', 'linears_mb', 'kl', 'top1'}`` with ``'model'``: what ``fn`` returned.
    """
    import copy

    from torch import nn

    from .capstone import check_capstone

    fn.time_limit = CAPSTONE_TIME_LIMIT_S
    fn.slow_hint = ("the capstone allows that much on two CPU cores; calibrate on fewer samples, or use RTN "
                    "where the layers are not sensitive")
    def fingerprint(m):
        return [(n, type(p).__name__, float(p.detach().double().sum())) for n, p in m.state_dict().items()]

    before = fingerprint(model)
    got = fn(copy.deepcopy(model), tokenizer, budget)
    if isinstance(got, tuple) and got and isinstance(got[0], nn.Module):
        raise CheckFailed(f"{fn.name} returned a tuple of {len(got)}: return the quantized model itself")
    if not isinstance(got, nn.Module):
        raise CheckFailed(f"{fn.name} returned {_describe(got)}: return the quantized model (an nn.Module)")
    if got is model or fingerprint(model) != before:
        raise CheckFailed("the float model changed: quantize the copy your function is given, not a global model")
    result = check_capstone(got, reference, budget)
    _ok(f"{result['mb']:.2f} MB ≤ {budget.max_mb:g} MB as stored, KL {result['kl']:.3f} ≤ {budget.max_kl:g} "
        f"nats/token on held-out text (top-1 agreement {result['top1']:.1%})")
    return {**result, "model": got}
