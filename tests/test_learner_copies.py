"""Learner copies of notebooks 00-05 run to the end: every exercise falls back to qtutor's own version.

Static checks, no notebook is executed: every function that holds a solution is
decorated with ``@exercise("N.k", fallback=exercises.<name>)``, numbered in order
as its heading says; the fallback is exported by :mod:`qtutor.exercises` and
passes the checker that the notebook calls on the learner's function; and in the
learner copy (solution stripped) the function still carries that fallback while
its own body raises ``NotImplementedError``.
"""
import ast
import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import qtutor.checks
from qtutor import exercises
from qtutor.course import exercise

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_notebooks import strip_solutions  # noqa: E402

# notebooks 06-11 follow the same pattern; add them here once their exercises are decorated
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[0-5]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _exercises(path: Path) -> list[dict]:
    """Each exercise of a notebook: its number, function, fallback, checker and the cell's source."""
    found, heading = [], None
    for cell in _cells(path):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            match = re.search(r"Exercise\s+(\d+\.\d+)", source)
            heading = match.group(1) if match else heading
            continue
        if "### BEGIN SOLUTION" not in source:
            continue
        solution_line = next(i for i, line in enumerate(source.splitlines(), 1) if "### BEGIN SOLUTION" in line)
        fn = next(node for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.FunctionDef) and node.lineno <= solution_line <= node.end_lineno)
        found.append({"fn": fn, "source": source, "heading": heading})
    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    for ex in found:
        calls = re.findall(rf"\b(check_\w+)\(\s*{ex['fn'].name}\s*\)", code)
        ex["checker"] = calls[0] if calls else None
    return found


def _decorator(fn: ast.FunctionDef) -> tuple[str, str] | None:
    """``(number, fallback name)`` of ``@exercise("N.k", fallback=exercises.name)``, or None."""
    for dec in fn.decorator_list:
        if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "exercise":
            number = dec.args[0].value if dec.args and isinstance(dec.args[0], ast.Constant) else None
            fallback = next((kw.value for kw in dec.keywords if kw.arg == "fallback"), None)
            if (isinstance(fallback, ast.Attribute) and isinstance(fallback.value, ast.Name)
                    and fallback.value.id == "exercises"):
                return number, fallback.attr
            return number, None
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_is_decorated_with_its_number(path):
    found = _exercises(path)
    assert found, f"{path.name} has no exercise"
    chapter = int(path.name[:2])
    for k, ex in enumerate(found, 1):
        name = ex["fn"].name
        decorator = _decorator(ex["fn"])
        assert decorator is not None, f"{path.name}: {name} lacks @exercise(..., fallback=exercises.<name>)"
        number, fallback = decorator
        assert number == f"{chapter}.{k}", f"{path.name}: {name} is exercise {chapter}.{k}, decorated {number!r}"
        assert ex["heading"] == number, f"{path.name}: {name} follows the heading of exercise {ex['heading']}"
        assert fallback in exercises.__all__, f"{path.name}: fallback exercises.{fallback} is not exported"
        assert ex["checker"] is not None, f"{path.name}: no checker is called on {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_fallback_passes_the_notebooks_checker(path):
    for ex in _exercises(path):
        _, fallback = _decorator(ex["fn"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            getattr(qtutor.checks, ex["checker"])(getattr(exercises, fallback))
        assert "✔" in out.getvalue(), f"{ex['checker']}(exercises.{fallback}) printed:\n{out.getvalue()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_learner_stub_keeps_the_fallback(path):
    for ex in _exercises(path):
        number, fallback = _decorator(ex["fn"])
        scope = {"exercise": exercise, "exercises": exercises, "torch": torch}
        exec(strip_solutions(ex["source"]), scope)
        fn = scope[ex["fn"].name]
        assert fn.exercise_number == number and fn.fallback is getattr(exercises, fallback)
        n_args = len(ex["fn"].args.args)
        with pytest.raises(NotImplementedError):
            fn.learner_fn(*[None] * n_args)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            getattr(qtutor.checks, ex["checker"])(fn)
        assert "still open" in out.getvalue(), out.getvalue()
