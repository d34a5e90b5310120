"""The learner's folder: copies never overwrite the learner's edits, the index lists every lesson, the command."""
import json
import os
import sys
from pathlib import Path

import pytest

from qtutor.cli import main
from qtutor.learner import (
    INDEX,
    STUB,
    course_command,
    exercises,
    index_notebook,
    prepare_learner_folder,
    write_learner_copies,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture
def course(tmp_path):
    """A two-lesson course checkout in tmp_path (notebooks/ and a timings record for one of them)."""
    nb = tmp_path / "notebooks"
    nb.mkdir()
    for i, title in enumerate(["Why quantize?", "Scale"]):
        cells = [
            {"cell_type": "markdown", "metadata": {}, "source": [f"# 0{i} · {title}\n"]},
            {"cell_type": "markdown", "metadata": {}, "source": [f"### ✏️ Exercise {i}.1 — task {i}\n"]},
            {"cell_type": "code", "metadata": {}, "execution_count": 3, "outputs": [{"output_type": "stream",
             "name": "stdout", "text": ["4\n"]}],
             "source": ["def f(x):\n", "    ### BEGIN SOLUTION\n", "    return x\n", "    ### END SOLUTION\n"]},
        ]
        (nb / f"0{i}_lesson.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                                           "nbformat_minor": 5}))
    record = tmp_path / "benchmarks" / "results" / "notebook_timings.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"machine": {"cpu": "Test CPU", "cores": 2}, "threads": 1, "date": "2026-12-01",
                                  "notebooks": {"00_lesson": {"seconds": 150.0}, "01_lesson": "not measured yet"}}))
    return tmp_path


def test_copies_written_then_edits_kept_untouched_refreshed_force_replaces(course):
    out = course / "student"
    assert set(write_learner_copies(course / "notebooks", out).values()) == {"written"}
    copy = out / "00_lesson.ipynb"
    assert STUB in _code(copy) and '"outputs": []' in copy.read_text()
    assert set(write_learner_copies(course / "notebooks", out).values()) == {"unchanged"}

    copy.write_text(copy.read_text().replace("raise NotImplementedError", "return 2 * x  #"))  # the learner saves
    src = course / "notebooks" / "01_lesson.ipynb"  # and the course changes under both copies
    for path in (course / "notebooks" / "00_lesson.ipynb", src):
        path.write_text(path.read_text().replace("task", "the task"))
    done = write_learner_copies(course / "notebooks", out)
    assert done == {"00_lesson.ipynb": "kept", "01_lesson.ipynb": "refreshed"}
    assert "return 2 * x" in copy.read_text() and "the task" in (out / "01_lesson.ipynb").read_text()
    assert write_learner_copies(course / "notebooks", out)["00_lesson.ipynb"] == "kept"  # still kept next time

    assert write_learner_copies(course / "notebooks", out, force=True)["00_lesson.ipynb"] == "replaced"
    assert STUB in _code(copy)


def _code(path: Path) -> str:
    return "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])


def test_index_lists_lessons_times_exercises_and_solutions(course):
    out = course / "student"
    prepare_learner_folder(course, out)
    assert (out / "solutions").is_symlink() and (out / "solutions" / "00_lesson.ipynb").is_file()
    nb = json.loads((out / INDEX).read_text())
    assert all(c["cell_type"] == "markdown" for c in nb["cells"])  # shows rendered, nothing to run
    text = "".join("".join(c["source"]) for c in nb["cells"])
    assert "[00 · Why quantize?](00_lesson.ipynb) | about 2 min | 0.1 task 0 | [solution](solutions/00_lesson.ipynb)" in text
    assert "[01 · Scale](01_lesson.ipynb) | not measured yet | 1.1 task 1" in text
    assert "Test CPU, 2 cores, 1 torch thread(s) per notebook, 1 notebook(s) at a time, 2026-12-01" in text
    assert "load average" not in text


def test_index_says_when_the_machine_was_busy(course):
    timings = {"machine": {"cpu": "Test CPU", "cores": 2}, "load_average": [1.5, 6.2], "notebooks": {}}
    assert "load average near 6" in json.dumps(index_notebook(course / "notebooks", timings))


def test_index_without_timings_record(course):
    (course / "benchmarks" / "results" / "notebook_timings.json").unlink()
    text = json.dumps(index_notebook(course / "notebooks", None))
    assert text.count("not measured yet") == 2


def test_every_course_notebook_has_a_titled_exercise_in_the_index():
    for path in NOTEBOOKS:
        assert exercises(json.loads(path.read_text())), f"{path.name}: no '### ✏️ Exercise N.M — title' heading"
    text = json.dumps(index_notebook(ROOT / "notebooks", json.loads((ROOT / "benchmarks" / "results" /
                                                                       "notebook_timings.json").read_text())))
    assert all(f"({p.name})" in text for p in NOTEBOOKS)


def test_course_command_headless_and_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cmd = course_command(tmp_path, port=8899)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.port=8899" in cmd and "--ServerApp.port_retries=0" in cmd
    assert f"--ServerApp.root_dir={tmp_path}" in cmd and f"--LabApp.default_url=/lab/tree/{INDEX}" in cmd
    if sys.platform == "linux":
        assert "--no-browser" in cmd
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--allow-root" not in course_command(tmp_path, browser=True)
    assert "--no-browser" not in course_command(tmp_path, browser=True)


def test_cli_no_start_prints_the_command(capsys, tmp_path):
    assert main(["course", "--no-start", "--no-browser", "--dir", str(tmp_path / "s"), "--port", "8899",
                 "--", "--ServerApp.ip=0.0.0.0"]) == 0
    out = capsys.readouterr().out
    assert "written: s/00_why_quantize.ipynb" in out
    assert out.strip().splitlines()[-1].endswith("--no-browser" + (" --allow-root" if os.geteuid() == 0 else "")
                                                 + " --ServerApp.ip=0.0.0.0")
    assert (tmp_path / "s" / INDEX).is_file()
