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
    "check_awq_scale_search", "check_dequant_gemv", "TIME_LIMIT_S",
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


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Learner:
    """The learner's function, called the way a checker needs: time-limited, errors in the learner's terms."""

    def __init__(self, fn: Callable):
        self.fn = getattr(fn, "learner_fn", fn)  # an @exercise-wrapped function: judge the learner's code
        self.name = getattr(self.fn, "__name__", "your function")

    def __call__(self, *args, **kwargs):
        use_alarm = threading.current_thread() is threading.main_thread()
        if use_alarm:
            def _alarm(signum, frame):
                raise _TimeUp

            previous = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
        try:
            result = self.fn(*args, **kwargs)
        except NotImplementedError:
            raise _ExerciseOpen from None
        except _TimeUp:
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
            raise CheckFailed(f"{self.name} raised {type(exc).__name__}{where}: {exc}") from None
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        if result is None:
            raise CheckFailed(f"{self.name} returned None: did you forget the `return` line?")
        return result


def _tensor(value, what: str, shape: tuple | None = None, floating: bool = False) -> torch.Tensor:
    """``value`` as a tensor, or a one-line CheckFailed saying what the learner returned instead."""
    if isinstance(value, str):
        raise CheckFailed(f"{what} is a string ({_describe(value)}): return a tensor")
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed(f"{what} is a {type(value).__name__}, not a tensor or array of numbers") from None
    if floating and not (t.is_floating_point() or t.is_complex()):
        raise CheckFailed(f"{what} has dtype {t.dtype}: return floats (the dequantized values), not integer codes")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CheckFailed(f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def _number(value, what: str) -> float:
    """``value`` as a Python float, or a one-line CheckFailed."""
    if isinstance(value, str):
        raise CheckFailed(f"{what} is a string ({_describe(value)}): return a number")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed(f"{what} is a {type(value).__name__} ({_describe(value)}), not one number") from None


def _checker(check: Callable) -> Callable:
    """Wrap a checker: the learner's function is time-limited and an unfinished stub is 'still open', not a failure."""

    @functools.wraps(check)
    def run(fn: Callable, *args, **kwargs):
        if not callable(fn):
            raise CheckFailed(f"pass your function itself (got a {type(fn).__name__}): {check.__name__}(my_function)")
        number = getattr(fn, "exercise_number", None)
        try:
            return check(_Learner(fn), *args, **kwargs)
        except _ExerciseOpen:
            label = f"exercise {number}" if number else f"{getattr(fn, '__name__', 'this exercise')}"
            print(f"… {label} is still open: replace the `raise NotImplementedError` line above with your code, "
                  "then run this cell again")
            return None

    return run


def compare(name: str, got, expected, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Print exact / approximate / max difference for ``got`` vs ``expected``."""
    got_t = torch.as_tensor(got, dtype=torch.float64)
    exp_t = torch.as_tensor(expected, dtype=torch.float64)
    if got_t.shape != exp_t.shape:
        raise CheckFailed(f"{name}: shape {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}")
    exact = bool(torch.equal(got_t, exp_t))
    approx = bool(torch.allclose(got_t, exp_t, atol=atol, rtol=rtol))
    diff = float((got_t - exp_t).abs().max()) if got_t.numel() else 0.0
    print(f"{name:<22} exact: {str(exact):<5} | approx: {str(approx):<5} | max diff: {diff:.3g}")


def _ok(msg: str) -> None:
    print(f"✔ {msg}")


# --- 00: memory ----------------------------------------------------------------

@_checker
def check_memory_gb(fn: Callable[[float, float], float]) -> None:
    """``fn(n_params, bits_per_weight)`` must return weight memory in GB (10**9 bytes)."""
    cases = [(7e9, 16), (7e9, 4), (70e9, 8), (180e9, 4.5), (135e6, 32)]
    for n, b in cases:
        got, want = float(fn(n, b)), n * b / 8 / 1e9
        if abs(got - want) <= 1e-9 * want:
            continue
        if abs(got - want * 1e9 / 2**30) <= 1e-6 * want:
            raise CheckFailed(f"fn({n:.3g}, {b}) = {got:.4g}: that is GiB (2**30 bytes); the table uses GB (10**9 bytes)")
        if abs(got - want * 8) <= 1e-6 * want:
            raise CheckFailed(f"fn({n:.3g}, {b}) = {got:.4g}: you counted bits, not bytes (divide by 8)")
        raise CheckFailed(f"fn({n:.3g}, {b}) = {got:.4g}, expected {want:.4g} GB")
    compare("memory (GB)", [fn(n, b) for n, b in cases], [n * b / 8 / 1e9 for n, b in cases], rtol=1e-9)
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
        for i, x in enumerate(inputs):
            q, scale, zp = fn(x.clone(), n_bits)
            qp = choose_qparams(x, spec)
            want_q = quantize(x, qp, spec)
            where = f"input {i} ({n_bits}-bit)"
            scale = float(scale)
            if abs(scale - qp.scale.item()) > 1e-6 * qp.scale.item():
                hint = ""
                if abs(scale - (x.max() - x.min()).item() / spec.qmax) < 1e-6:
                    hint = " — the range must include 0.0: use min(x.min(), 0) and max(x.max(), 0)"
                elif abs(scale - qp.scale.item() * spec.qmax / 2**n_bits) < 1e-6 * qp.scale.item():
                    hint = f" — divide by 2**n_bits - 1 = {spec.qmax}, the number of steps, not by 2**n_bits"
                raise CheckFailed(f"{where}: scale {scale:.6g}, expected {qp.scale.item():.6g}{hint}")
            if int(round(float(zp))) != int(qp.zero_point):
                raise CheckFailed(
                    f"{where}: zero_point {zp}, expected {int(qp.zero_point)} — round(-min / scale), an integer code"
                )
            q = torch.as_tensor(q)
            if q.is_floating_point() and not torch.equal(q, q.round()):
                raise CheckFailed(f"{where}: q holds fractions — round to the nearest integer")
            if int(q.min()) < 0 or int(q.max()) > spec.qmax:
                raise CheckFailed(f"{where}: codes span [{int(q.min())}, {int(q.max())}] — clamp to [0, {spec.qmax}]")
            if not torch.equal(q.long(), want_q.long()):
                n_bad = int((q.long() != want_q.long()).sum())
                raise CheckFailed(f"{where}: {n_bad} codes differ from qtutor.quantize")
        compare(f"codes ({n_bits}-bit)", q.long(), want_q.long())
    _ok("asymmetric quantization matches qtutor")


# --- 02: per-group fake quantization -------------------------------------------------

@_checker
def check_group_fake_quant(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """``fn(w, n_bits, group_size) -> w_hat``: symmetric, groups of consecutive inputs in each row."""
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(24, 192, generator=gen)
    w[3, 70] = 12.0  # one outlier: only its own group should suffer
    for n_bits, gs in ((4, 64), (3, 32), (8, 192)):
        got = torch.as_tensor(fn(w.clone(), n_bits, gs))
        want = fake_quant(w, QuantSpec(n_bits=n_bits, granularity=PerGroup(gs)))
        if got.shape != w.shape:
            raise CheckFailed(f"w_hat has shape {tuple(got.shape)}: reshape back to {tuple(w.shape)}")
        if torch.allclose(got, want, atol=1e-6):
            continue
        for label, spec in (
            ("per-tensor", QuantSpec(n_bits=n_bits, granularity=PerTensor())),
            ("per-channel (one scale per row)", QuantSpec(n_bits=n_bits, granularity=PerChannel(0))),
            ("groups along the output axis (columns)", QuantSpec(n_bits=n_bits, granularity=PerGroup(gs, axis=0))
             if w.shape[0] % gs == 0 else None),
        ):
            if spec is not None and torch.allclose(got, fake_quant(w, spec), atol=1e-6):
                raise CheckFailed(f"{n_bits}-bit g{gs}: your result equals {label} quantization — "
                                  "view w as (rows, n_groups, group_size) and reduce over the last axis")
        raise CheckFailed(f"{n_bits}-bit g{gs}: max diff {float((got - want).abs().max()):.3g} from qtutor.fake_quant")
    compare("w_hat (4-bit g64)", fn(w.clone(), 4, 64), fake_quant(w, QuantSpec(n_bits=4, granularity=PerGroup(64))), atol=1e-6)
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
        errs = {r: mse(x, fake_quant(x, QuantSpec(n_bits=n_bits, clip_ratio=r))) for r in ratios}
        want = min(errs, key=errs.get)
        got = fn(x.clone(), n_bits, list(ratios))
        if got not in errs:
            raise CheckFailed(f"{n_bits}-bit: returned {got!r}, which is not one of the candidate ratios")
        if got != want:
            worst = max(errs, key=errs.get)
            hint = " — that is the ratio with the LARGEST error" if got == worst else ""
            raise CheckFailed(f"{n_bits}-bit: returned ratio {got} (MSE {errs[got]:.4g}); "
                              f"the best is {want} (MSE {errs[want]:.4g}){hint}")
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
    got = torch.as_tensor(fn(x.clone(), 6.0)).flatten().tolist()
    if got == [6]:
        raise CheckFailed("dim 3 holds exactly 6.0: LLM.int8() counts |x| >= threshold, not >")
    if got == [3]:
        raise CheckFailed("dim 6 holds -9.0: compare |x|, not x")
    if sorted(got) == want and got != want:
        raise CheckFailed("return the dims sorted in increasing order")
    if got != want:
        raise CheckFailed(f"got {got}, expected {want} (x has shape (batch, seq, hidden): reduce over all but the last axis)")
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
    for alpha in (0.5, 0.8, 0.25):
        got = torch.as_tensor(fn(act.clone(), w.clone(), alpha))
        want = smoothing_scales(act, [w], alpha)
        if got.shape != want.shape:
            raise CheckFailed(f"s has shape {tuple(got.shape)}: one scale per input channel, shape {tuple(want.shape)}")
        if torch.allclose(got, want, rtol=1e-5):
            continue
        if torch.allclose(got, smoothing_scales(act, [w], 1 - alpha), rtol=1e-5):
            raise CheckFailed(f"alpha={alpha}: exponents swapped — max|X|^alpha / max|W|^(1-alpha)")
        w_max = w.amax(0).clamp(min=1e-5)
        if torch.allclose(got, act.pow(alpha) / w_max.pow(1 - alpha), rtol=1e-5):
            raise CheckFailed("use max |W| over the output dimension (abs before max)")
        if torch.allclose(got, act.pow(alpha) / w.abs().amax(1).mean().pow(1 - alpha), rtol=1e-5):
            raise CheckFailed("reduce W over its output axis (dim 0): one value per input channel")
        raise CheckFailed(f"alpha={alpha}: max diff {float((got - want).abs().max()):.3g} from qtutor's smoothing_scales")
    compare("scales (alpha=0.5)", fn(act.clone(), w.clone(), 0.5), smoothing_scales(act, [w], 0.5), rtol=1e-5)
    _ok("SmoothQuant scales match qtutor")


# --- 06: LLM.int8() decomposition ---------------------------------------------------------------

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
    got = torch.as_tensor(fn(x.clone(), w.clone(), 6.0)).float()
    if got.shape != want.shape:
        raise CheckFailed(f"y has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    tol = 0.003 * float(want.abs().max())  # fp16 rounding, not int8 error, may differ
    err = float((got - want).abs().max())
    if err > tol:
        no_outliers = llm_int8_matmul(x, CB, SCB, 0.0).float()
        if float((got - no_outliers).abs().max()) <= tol:
            raise CheckFailed("your result ignores the outlier columns: they must go through the 16-bit path")
        exact = (x.float() @ w.float().T)
        if float((got - exact).abs().max()) <= 1e-2:
            raise CheckFailed("your result equals the fp16 product: the non-outlier part must be quantized to int8")
        raise CheckFailed(f"max diff {err:.3g} from qtutor's llm_int8_matmul (tolerance {tol:.3g})")
    compare("y", got, want, atol=tol)
    _ok("LLM.int8() decomposition matches qtutor (within 0.3 % of max |y|)")


# --- 09: NF4 block quantization ------------------------------------------------------------

@_checker
def check_nf4_block(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(x, levels) -> codes``: one block scaled by its absmax, each value to its nearest level."""
    from .methods.nf4 import NF4Config, normal_float_levels, quantize_4bit

    levels = normal_float_levels()
    gen = torch.Generator().manual_seed(9)
    for trial in range(3):
        x = torch.randn(64, generator=gen) * (0.02 if trial else 1.0)
        state = quantize_4bit(x, NF4Config(blocksize=64, double_quant=False))
        want = torch.stack([state.packed[:, 0] >> 4, state.packed[:, 0] & 0xF], 1).reshape(-1).long()
        got = torch.as_tensor(fn(x.clone(), levels.clone())).long().flatten()
        if got.shape != want.shape:
            raise CheckFailed(f"codes have shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if torch.equal(got, want):
            continue
        if int(got.max()) > 15 or int(got.min()) < 0:
            raise CheckFailed("codes must be indices 0..15 into the level table, not values")
        scaled_by_max = torch.bucketize(x / x.max(), (levels[:-1] + levels[1:]) / 2)
        if torch.equal(got, scaled_by_max):
            raise CheckFailed("divide by the block's max |x| (absmax), not its max")
        n_bad = int((got != want).sum())
        raise CheckFailed(f"{n_bad} of 64 codes differ from qtutor/bitsandbytes: pick the nearest level of x / max|x|")
    compare("codes", got, want)
    _ok("NF4 block quantization matches bitsandbytes")


# --- 10: GGUF -------------------------------------------------------------------------------------

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
    want = quantize_blocks(x, "Q8_0")
    got = np.asarray(fn(x.copy()))
    if got.shape != want.shape or got.dtype != np.uint8:
        raise CheckFailed(f"blocks must be uint8 of shape {want.shape}, got {got.dtype} {got.shape}")
    if np.array_equal(got, want):
        compare("Q8_0 bytes", torch.from_numpy(got.astype(np.int64)), torch.from_numpy(want.astype(np.int64)))
        _ok("Q8_0 encoder is byte-identical with qtutor (and so with llama.cpp and gguf-py)")
        return
    if not np.array_equal(got[:, :2], want[:, :2]):
        if np.array_equal(got[:, 32:], want[:, :2]):
            raise CheckFailed("d must come first: bytes 0-1 hold d as float16, then the 32 codes")
        raise CheckFailed("the scale bytes differ: d = max|x| / 127, stored as float16 (x.astype(np.float16).view(np.uint8))")
    bad_blocks = np.nonzero((got != want).any(axis=1))[0]
    if 5 in bad_blocks and len(bad_blocks) == 1:
        raise CheckFailed("a rounding tie went the wrong way: llama.cpp uses roundf (halves away from zero), "
                          "not np.round (halves to even)")
    if 3 in bad_blocks:
        raise CheckFailed("the all-zero block is wrong: with d = 0 use 1/d = 0, so every code is 0")
    back = dequantize_blocks(got, "Q8_0")
    raise CheckFailed(f"{len(bad_blocks)} blocks differ; your blocks decode to max error "
                      f"{float(np.abs(back - x).max()):.3g} — codes are round(x / d) as int8")


@_checker
def check_k4_scale_packing(fn: Callable) -> None:
    """``fn(ls, lm) -> packed``: eight 6-bit scales and mins per super-block (n, 8) -> 12 bytes (n, 12)."""
    import numpy as np

    from .gguf import pack_scales_k4, unpack_scales_k4

    rng = np.random.default_rng(12)
    ls, lm = rng.integers(0, 64, (32, 8)).astype(np.uint8), rng.integers(0, 64, (32, 8)).astype(np.uint8)
    want = pack_scales_k4(ls, lm)
    got = np.asarray(fn(ls.copy(), lm.copy()))
    if got.shape != want.shape:
        raise CheckFailed(f"packed must have shape {want.shape} (12 bytes per super-block), got {got.shape}")
    got = got.astype(np.uint8)
    if np.array_equal(got, want):
        compare("packed scales", torch.from_numpy(got.astype(np.int64)), torch.from_numpy(want.astype(np.int64)))
        _ok("6-bit scale packing matches llama.cpp's get_scale_min_k4")
        return
    sc, mn = unpack_scales_k4(got)
    if np.array_equal(sc, lm) and np.array_equal(mn, ls):
        raise CheckFailed("scales and mins are swapped: bytes 0-3 start with the scales, bytes 4-7 with the mins")
    if np.array_equal(sc[:, :4], ls[:, :4]) and not np.array_equal(sc[:, 4:], ls[:, 4:]):
        raise CheckFailed("sub-blocks 4-7 are wrong: their low 4 bits go to bytes 8-11 (scale low nibble, min high "
                          "nibble) and their top 2 bits to bits 6-7 of bytes 0-3 (scales) and 4-7 (mins)")
    raise CheckFailed("sub-blocks 0-3 are wrong: scale j goes to the low 6 bits of byte j, min j of byte j + 4")


# --- 07: GPTQ's column update ---------------------------------------------------------

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
            q, err = step(W1, Hinv[i1:i2, i1:i2], i, scale, zero, maxq)
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
    probe = W[:, :16].clone()
    fn(probe, Hinv[:16, :16], 0, scale, zero, 7)
    if torch.equal(probe[:, 1:], W[:, 1:16]):
        raise CheckFailed("W1's later columns did not change, so each column is rounded on its own, as "
                          "round-to-nearest: spread the error of column i over columns i+1… of W1 in place "
                          "(W1[:, i:] -= err ⊗ Hinv1[i, i:])")
    got = _gptq_with_step(fn, W, Hinv, scale, zero, 7)
    rtn = gptq_fake_quant(W, scale.unsqueeze(1), zero.unsqueeze(1), 3)
    if got.shape != want.shape:
        raise CheckFailed(f"q has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    codes = got / scale.unsqueeze(1) + zero.unsqueeze(1)
    if not torch.allclose(codes, codes.round(), atol=1e-3):
        raise CheckFailed("q is not on the grid: return the dequantized value scale · (code − zero), not w or a code")
    if torch.allclose(got, rtn):
        raise CheckFailed("you get round-to-nearest: the error of column i must be spread over columns i+1… "
                          "of W1 (W1[:, i:] -= err ⊗ Hinv1[i, i:])")
    if not torch.allclose(got, want, atol=1e-5):
        err_x = ((X @ (W - got).T) ** 2).sum() / ((X @ (W - want).T) ** 2).sum()
        raise CheckFailed(f"q differs from GPTQ's in {int((got - want).abs().gt(1e-5).sum())} places "
                          f"(output error {float(err_x):.2f}× GPTQ's): divide the error by Hinv1[i, i] and "
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

    gen = torch.Generator().manual_seed(11)
    lin = nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=gen) * 0.05)
    x = torch.randn(256, 128, generator=gen)
    x[:, [3, 40, 77]] *= 25  # salient input channels
    want_s, want_ratio, _ = search_scales(lin, [lin], x, 3, 32, 20)
    learner = copy.deepcopy(lin)
    ratio, s = fn(learner, x, 3, 32, 20)
    if not torch.equal(learner.weight, lin.weight):
        raise CheckFailed("the linear's weight changed: restore it after trying each ratio")
    if abs(float(ratio) - want_ratio) > 1e-9:
        hint = " (α = 0 is plain round-to-nearest: are the scales applied before quantizing and undone after?)" \
            if float(ratio) == 0.0 else ""
        raise CheckFailed(f"best ratio {float(ratio)}, expected {want_ratio}{hint}")
    s = torch.as_tensor(s)
    if torch.allclose(s, x.abs().mean(0).pow(want_ratio)) and not torch.allclose(s, want_s):
        raise CheckFailed("scales not normalised: divide s by sqrt(max(s) · min(s))")
    if not torch.allclose(s, want_s, rtol=1e-5):
        raise CheckFailed("scales differ: s = mean|x|^α per input channel (clamped at 1e-4), then normalised")
    compare("AWQ scales", s, want_s, rtol=1e-5)
    _ok(f"scale search matches qtutor (α = {want_ratio})")


# --- 11: a dequantize-GEMV in Triton --------------------------------------------------

@_checker
def check_dequant_gemv(fn: Callable) -> None:
    """``fn(x (K,) fp32, qweight, qzeros, scales fp32, group_size) -> y (N,)``: the 4-bit GPTQ-v2 GEMV."""
    from .formats.layouts import pack_gptq
    from .methods.grid import rtn_grid_quantize

    gen = torch.Generator().manual_seed(5)
    K, N, gs = 96, 48, 32
    qw = rtn_grid_quantize(torch.randn(N, K, generator=gen), 4, gs)
    p = pack_gptq(qw, version=2)
    scales = qw.scale.T.contiguous()  # (n_groups, N) float32
    x = torch.randn(K, generator=gen)
    want = qw.dequantize() @ x
    got = torch.as_tensor(fn(x, p["qweight"], p["qzeros"], scales, gs)).float().flatten()
    if got.shape != want.shape:
        raise CheckFailed(f"y has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    q = qw.q.float()
    g = qw.g_idx.long()
    wrong = {
        "the codes are read from the wrong nibbles: row k sits at bits 4·(k % 8) of word k // 8, lowest first":
            (qw.scale[:, g] * (q.reshape(N, -1, 8).flip(-1).reshape(N, K) - qw.zero.float()[:, g])) @ x,
        "the zero-point is not subtracted: w = scale · (q − zero)": (qw.scale[:, g] * q) @ x,
        "the scale is missing: w = scale · (q − zero)": (q - qw.zero.float()[:, g]) @ x,
    }
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        for hint, value in wrong.items():
            if torch.allclose(got, value, rtol=1e-4, atol=1e-4):
                raise CheckFailed(hint)
        raise CheckFailed(f"y differs from the reference by up to {float((got - want).abs().max()):.3g}")
    compare("dequant-GEMV", got, want, rtol=1e-4, atol=1e-4)
    _ok("unpack-and-scale matches the reference")
