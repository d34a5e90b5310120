"""The CPU path and the kernel path of W8A8 and NF4 refuse the same bad inputs with the same error class.

Each case runs the method's public function with ``kernel=False`` (PyTorch) and
``kernel=True`` (Triton: the interpreter on a CPU). Both paths run the kernel
launcher's own checks (``check_operands`` in ``kernels/w8a8.py``, ``check_activations``
in ``kernels/nf4.py``), so a bad input is the same ``ValueError`` on either, and an
input with no tokens is an empty result of the right shape on either.
(LLM.int8()'s two paths: ``tests/kernels/test_launch_checks.py``.)
"""
import pytest
import torch

from qtutor.kernels.w8a8 import FP8
from qtutor.methods.nf4 import NF4Config, nf4_linear, quantize_4bit
from qtutor.methods.w8a8 import ActQuant, quantize_weight_int8, w8a8_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _outcome(fn):
    try:
        out = fn()
    except Exception as err:  # noqa: BLE001 - the class and message are what is compared
        return f"{type(err).__name__}: {err}"
    return f"ok {tuple(out.shape)} {out.dtype}"


_W = quantize_weight_int8(torch.randn(16, 32, generator=torch.Generator().manual_seed(0)))
W8A8_CASES = {  # name: (x, q_w, s_w, expected outcome: "ok" or the start of the ValueError's message)
    "wrong-K": (lambda: torch.randn(3, 31), _W[0], _W[1], "ValueError: q_w has K=32"),
    "q_w-float": (lambda: torch.randn(3, 32), _W[0].float(), _W[1], "ValueError: q_w must be 2-D int8"),
    "q_w-fp8": (lambda: torch.randn(3, 32), _W[0].to(FP8), _W[1], "ValueError: q_w has dtype"),
    "s_w-shape": (lambda: torch.randn(3, 32), _W[0], _W[1][:3], "ValueError: s_w must have shape (16,)"),
    "s_w-int": (lambda: torch.randn(3, 32), _W[0], _W[1].to(torch.int32), "ValueError: s_w must have shape"),
    "int-x": (lambda: torch.ones(3, 32, dtype=torch.int32), _W[0], _W[1], "ValueError: x has dtype torch.int32"),
    "float64-x": (lambda: torch.randn(3, 32).double(), _W[0], _W[1], "ValueError: x has dtype torch.float64"),
    "no-tokens": (lambda: torch.randn(0, 32), _W[0], _W[1], "ok (0, 16)"),
    "no-tokens-3d": (lambda: torch.randn(2, 0, 32), _W[0], _W[1], "ok (2, 0, 16)"),
    "3d": (lambda: torch.randn(2, 3, 32).half(), _W[0], _W[1], "ok (2, 3, 16)"),
}


@pytest.mark.parametrize("act", [ActQuant(), ActQuant(static_scale=0.05)], ids=["dynamic", "static"])
@pytest.mark.parametrize("case", sorted(W8A8_CASES))
def test_w8a8_paths_agree(case, act):
    make_x, q_w, s_w, want = W8A8_CASES[case]
    cpu = _outcome(lambda: w8a8_linear(make_x(), q_w, s_w, act, kernel=False))
    gpu = _outcome(lambda: w8a8_linear(make_x().to(DEVICE), q_w.to(DEVICE), s_w.to(DEVICE), act, kernel=True))
    assert cpu == gpu
    assert cpu.startswith(want)


_ST = quantize_4bit(torch.randn(16, 64, generator=torch.Generator().manual_seed(0)), NF4Config())
NF4_CASES = {  # name: (x, expected outcome)
    "wrong-K": (lambda: torch.randn(2, 63).half(), "ValueError: x has shape (2, 63): its last dimension"),
    "float32-x": (lambda: torch.randn(2, 64), "ok (2, 16) torch.float32"),  # bitsandbytes' default compute dtype
    "bfloat16-x": (lambda: torch.randn(2, 64).bfloat16(), "ok (2, 16) torch.bfloat16"),
    "float64-x": (lambda: torch.randn(2, 64).double(), "ValueError: x has dtype torch.float64"),
    "int-x": (lambda: torch.ones(2, 64, dtype=torch.int32), "ValueError: x has dtype torch.int32"),
    "no-tokens": (lambda: torch.randn(0, 64).half(), "ok (0, 16) torch.float16"),
    "no-tokens-3d": (lambda: torch.randn(2, 0, 64).half(), "ok (2, 0, 16) torch.float16"),
}


def _on(state, device):
    return type(state)(state.packed.to(device), state.shape, state.dtype, state.config, state.absmax.to(device),
                       state.offset.to(device), state.absmax2.to(device))


@pytest.mark.parametrize("case", sorted(NF4_CASES))
def test_nf4_paths_agree(case):
    make_x, want = NF4_CASES[case]
    cpu = _outcome(lambda: nf4_linear(make_x(), _ST, kernel=False))
    gpu = _outcome(lambda: nf4_linear(make_x().to(DEVICE), _on(_ST, DEVICE), kernel=True))
    assert cpu == gpu
    assert cpu.startswith(want)
