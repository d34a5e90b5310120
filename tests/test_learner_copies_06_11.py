"""Learner copies of notebooks 06 onwards reach the end: every exercise falls back to qtutor's own version.

Static checks only (no notebook is executed here): each function holding a
``### BEGIN SOLUTION`` region is decorated with ``@exercise("N.k", fallback=exercises.<name>)``,
or is a ``@triton.jit`` function launched from a decorated Python function that
unwraps Triton's errors with ``kernel_stub_errors()``; every fallback exists in
``qtutor.exercises`` and takes the learner function's parameters.
"""
import ast
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from qtutor import exercises
from qtutor.course import exercise

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) if int(p.name[:2]) >= 6]


def _functions(path: Path) -> tuple[list[ast.FunctionDef], str]:
    cells = json.loads(path.read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.FunctionDef)], code


def _exercise_decorator(fn: ast.FunctionDef) -> ast.Call | None:
    for dec in fn.decorator_list:
        if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "exercise":
            return dec
    return None


def _is_triton_jit(fn: ast.FunctionDef) -> bool:
    return any(ast.unparse(dec) in ("triton.jit", "jit") for dec in fn.decorator_list)


def _holds_solution(fn: ast.FunctionDef, code: str) -> bool:
    body = "\n".join(code.splitlines()[fn.lineno - 1:fn.end_lineno])
    return "### BEGIN SOLUTION" in body


def test_notebooks_06_to_11_are_all_here():
    assert [p.name[:2] for p in NOTEBOOKS][:6] == ["06", "07", "08", "09", "10", "11"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_falls_back_to_qtutor(path):
    functions, code = _functions(path)
    decorated = {fn.name: fn for fn in functions if _exercise_decorator(fn)}
    assert decorated, f"{path.name}: no @exercise function"
    numbers = []
    for fn in decorated.values():
        call = _exercise_decorator(fn)
        number = ast.literal_eval(call.args[0])
        assert re.fullmatch(rf"{int(path.name[:2])}\.\d+", number), f"{fn.name}: exercise number {number!r}"
        numbers.append(number)
        fallback = next(kw.value for kw in call.keywords if kw.arg == "fallback")
        assert isinstance(fallback, ast.Attribute) and ast.unparse(fallback.value) == "exercises", ast.unparse(fallback)
        qtutor_fn = getattr(exercises, fallback.attr)  # importable
        assert callable(qtutor_fn) and fallback.attr in exercises.__all__
        learner_params = [a.arg for a in fn.args.args]
        assert list(inspect.signature(qtutor_fn).parameters) == learner_params, (fn.name, fallback.attr)
    assert len(set(numbers)) == len(numbers), numbers
    for fn in functions:
        if not _holds_solution(fn, code) or fn.name in decorated:
            continue
        assert _is_triton_jit(fn), f"{path.name}: {fn.name} holds a solution but has no @exercise fallback"
        # a kernel stub raises inside Triton: a decorated launcher must unwrap it
        launchers = [d for d in decorated.values() if "kernel_stub_errors" in ast.unparse(d)]
        assert launchers, f"{path.name}: the Triton exercise {fn.name} has no decorated launcher using kernel_stub_errors"


def test_kernel_stub_errors_unwraps_only_stubs():
    class InterpreterError(Exception):
        pass

    InterpreterError.__module__ = "triton.runtime.errors"
    with pytest.raises(NotImplementedError):
        with exercises.kernel_stub_errors():
            raise InterpreterError("NotImplementedError('Exercise: write your solution here')")
    with pytest.raises(InterpreterError):
        with exercises.kernel_stub_errors():
            raise InterpreterError("IndexError: out of bounds")
    with pytest.raises(ValueError):
        with exercises.kernel_stub_errors():
            raise ValueError("NotImplementedError mentioned, but not by Triton")


@triton.jit
def _stub(v):
    raise NotImplementedError("Exercise: write your solution here")


@triton.jit
def _stub_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, _stub(tl.load(x_ptr + offs)))


def test_a_stub_inside_a_real_triton_kernel_reaches_exercise():
    """The learner copy of notebook 11: the stub raises inside a @triton.jit helper; the launcher falls back."""
    def qtutor_double(x):
        return 2 * x

    @exercise("11.99", fallback=qtutor_double)
    def double(x):
        y = torch.empty_like(x)
        with exercises.kernel_stub_errors():
            _stub_kernel[(1,)](x, y, BLOCK=x.numel())
        return y

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.arange(8, dtype=torch.float32, device=device)
    with pytest.raises(NotImplementedError):
        double.learner_fn(x)
    assert torch.equal(double(x), 2 * x)
