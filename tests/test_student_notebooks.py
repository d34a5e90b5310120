import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_notebooks import strip_solutions, student_notebook  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_strip_solutions_keeps_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert strip_solutions(src) == 'def f(x):\n    raise NotImplementedError("Exercise: write your solution here")\n'


def test_unbalanced_markers_rejected():
    with pytest.raises(ValueError):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_an_exercise_and_a_clean_student_copy(path):
    nb = json.loads(path.read_text())
    source = "".join("".join(c["source"]) for c in nb["cells"])
    assert "### BEGIN SOLUTION" in source and "check_" in source
    student = student_notebook(nb)
    code = "".join("".join(c["source"]) for c in student["cells"] if c["cell_type"] == "code")
    assert "### BEGIN SOLUTION" not in code and "NotImplementedError" in code
    assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")


def test_stub_raises_not_implemented():
    nb = student_notebook(json.loads(NOTEBOOKS[0].read_text()))
    cell = next(c for c in nb["cells"] if "def model_memory_gb" in "".join(c["source"]))
    from qtutor import exercises
    from qtutor.course import exercise

    scope: dict = {"exercise": exercise, "exercises": exercises}
    exec("".join(cell["source"]), scope)
    fn = scope["model_memory_gb"]
    with pytest.raises(NotImplementedError):
        getattr(fn, "learner_fn", fn)(1e9, 4)  # the learner's stub; the decorated function falls back


def test_script_writes_copies(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_student_notebooks.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


# --- markers are strict: a typo must never leak a solution into a learner copy -----------------------

from qtutor.learner import MarkerError, write_learner_copies  # noqa: E402


def _nb(*sources):
    return {"cells": [{"cell_type": "code", "source": s, "outputs": [], "execution_count": None, "metadata": {}}
                      for s in sources], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.mark.parametrize("source,match", [
    ("def f():\n    ## BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "looks like a solution marker"),
    ("def f():\n    ### BEGIN SOLUTIONS\n    return 1\n    ### END SOLUTION\n", "looks like a solution marker"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    # end solution\n", "looks like a solution marker"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without a BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "nested"),
    ('@exercise("9.9", fallback=g)\ndef f():\n    return 1\n', "without '### BEGIN SOLUTION'"),
], ids=["two hashes", "plural", "lower-case end", "unclosed", "unopened", "nested", "decorated, no markers"])
def test_bad_markers_named_with_notebook_and_cell(source, match):
    with pytest.raises(MarkerError, match=match) as info:
        student_notebook(_nb("x = 0\n", source), "99_demo.ipynb")
    assert "99_demo.ipynb, cell 1" in str(info.value)


def test_bad_marker_in_one_notebook_writes_no_file(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    good = _nb('@exercise("1.1", fallback=g)\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n')
    (src / "01_good.ipynb").write_text(json.dumps(good))
    (src / "02_bad.ipynb").write_text(json.dumps(_nb("def f():\n    ### BEGIN SOLUTON\n    return 1\n")))
    out = tmp_path / "out"
    with pytest.raises(MarkerError, match="02_bad.ipynb, cell 0"):
        write_learner_copies(src, out)
    assert not out.exists()
