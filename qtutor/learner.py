"""The learner's folder and the JupyterLab server that opens on it (``qtutor course``, ``make course``).

``student/`` (gitignored) holds

* ``START_HERE.ipynb``: the index — what to open first, how long each notebook
  takes, what each exercise asks; markdown cells only, so it shows rendered with
  nothing to run;
* ``NN_topic.ipynb``: the learner copies — each exercise's solution (the lines
  between ``### BEGIN SOLUTION`` and ``### END SOLUTION``) replaced by a stub,
  outputs cleared;
* ``solutions``: a link to ``notebooks/``, the solution notebooks.

A learner copy is written when it is missing, and refreshed when the course
changed but the copy is still exactly what was last written (the hashes are kept
in ``student/.qtutor-copies.json``); a copy the learner saved is never touched
unless ``force`` is given (``make student FORCE=1``).

The index is rebuilt on every launch from the notebooks' own headings and the
committed timings file (``benchmarks/results/notebook_timings.json``, written by
``make timings``) instead of being committed: the notebooks change often, and an
index generated at launch cannot go stale, so no up-to-date test is needed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

__all__ = [
    "strip_solutions", "student_notebook", "MarkerError", "write_learner_copies", "exercises", "lessons",
    "timings_machine", "index_notebook",
    "prepare_learner_folder", "course_command", "repo_root", "TIMINGS",
]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write your solution here")'
TIMINGS = Path("benchmarks") / "results" / "notebook_timings.json"
INDEX = "START_HERE.ipynb"
_HASHES = ".qtutor-copies.json"
_EXERCISE = re.compile(r"^#+\s*\S*\s*Exercise\s+(\d+\.\d+)\s*[—–-]+\s*(.+?)\s*$")


def repo_root() -> Path:
    """The course checkout: the folder above the package when it holds notebooks/ (an editable install), else cwd."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()


# a review question's answer line, ``answer = 3.64  # ANSWER``: the learner copy gets ``answer = None``
_ANSWER = re.compile(r"^(\s*[A-Za-z_]\w*\s*=\s*)\S.*?#\s*ANSWER\s*$")
_ANSWER_LIKE = re.compile(r"#\s*ANSWER\s*$")  # upper case, at the end of the line
_MARKER_LIKE = re.compile(r"^#.*(\b(BEGIN|END|START|STOP|BEING|BEGING)\w*\b.*\bSOL\w*|\bSOL\w*\b.*\b(BEGIN|END)\b)",
                          re.IGNORECASE)  # comment lines that mention begin/end and a "sol…" word


class MarkerError(ValueError):
    """A notebook's solution markers are unknown, misspelled, unbalanced or missing."""


def strip_solutions(source: str, where: str = "this cell") -> str:
    """Replace each BEGIN/END SOLUTION region of a cell's source by a stub at the same indentation, and the value
    of each review answer line (``answer = 3.64  # ANSWER``) by ``None``.

    A line that looks like a marker but is not exactly ``### BEGIN SOLUTION`` or
    ``### END SOLUTION`` (``## BEGIN SOLUTION``, ``### BEGIN SOLUTIONS``, ``# end solution``)
    is refused, as are nested, unopened and unclosed regions: a learner copy must never
    leak a solution because of a typo. ``where`` names the notebook and cell in the error.
    """
    out, inside = [], False
    for n, line in enumerate(source.splitlines(keepends=True), 1):
        text = line.strip()
        if text == BEGIN:
            if inside:
                raise MarkerError(f"{where}, line {n}: BEGIN SOLUTION inside another solution (nested markers)")
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out.append(f"{indent}{STUB}\n")
        elif text == END:
            if not inside:
                raise MarkerError(f"{where}, line {n}: END SOLUTION without a BEGIN SOLUTION above it")
            inside = False
        elif not inside and _ANSWER_LIKE.search(line):
            m = _ANSWER.match(line.rstrip("\n"))
            if not m:
                raise MarkerError(f"{where}, line {n}: {text!r} marks an answer, but only a line `name = value  "
                                  "# ANSWER` can be blanked in the learner copy")
            out.append(f"{m.group(1)}None  # your answer\n")
        elif _MARKER_LIKE.search(text):
            raise MarkerError(f"{where}, line {n}: {text!r} looks like a solution marker but is not one of "
                              f"{BEGIN!r} / {END!r} (the only two spellings the learner copies understand)")
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: BEGIN SOLUTION is never closed by {END!r}")
    return "".join(out)


def student_notebook(nb: dict, name: str = "notebook") -> dict:
    """A copy of notebook ``nb`` with solutions stubbed and outputs cleared.

    Raises :class:`MarkerError` (naming ``name`` and the cell) for bad markers, and for an
    exercise cell (a function decorated with ``@exercise``) that holds no solution markers:
    its solution would reach the learner.
    """
    nb = json.loads(json.dumps(nb))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        where = f"{name}, cell {i}"
        stripped = strip_solutions(src, where)
        if re.search(r"^\s*@exercise\(", src, re.MULTILINE) and BEGIN not in src:
            raise MarkerError(f"{where}: an @exercise function without {BEGIN!r} / {END!r} around its solution")
        cell["source"] = stripped.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return nb


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_learner_copies(notebooks: Path, out: Path, force: bool = False) -> dict[str, str]:
    """Write the learner copy of every ``notebooks/NN_*.ipynb`` into ``out``; return {name: what happened}.

    What happened is ``written`` (was missing), ``refreshed`` (the course changed and
    the copy was untouched since it was written), ``unchanged``, ``kept`` (the learner
    saved it: left alone) or ``replaced`` (``force``).
    """
    # every copy is made before anything is written: a bad marker in one notebook writes nothing
    texts = {path.name: _dump(student_notebook(json.loads(path.read_text()), path.name))
             for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))}
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / _HASHES
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    done = {}
    for name, text in texts.items():
        path = notebooks / name
        target = out / path.name
        if not target.exists():
            status = "written"
        else:
            current = _sha(target.read_text())
            if current == _sha(text):
                status = "unchanged"
            elif force:
                status = "replaced"
            elif current == record.get(path.name):
                status = "refreshed"
            else:
                status = "kept"
        if status in ("written", "refreshed", "replaced"):
            target.write_text(text)
        if status != "kept":
            record[path.name] = _sha(text)
        done[path.name] = status
    record_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return done


def exercises(nb: dict) -> list[tuple[str, str]]:
    """The (number, title) of each ``### ✏️ Exercise N.M — title`` heading of a notebook."""
    found = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if m := _EXERCISE.match(line.strip()):
                    found.append((m.group(1), m.group(2)))
    return found


def _title(nb: dict, fallback: str) -> str:
    for cell in nb["cells"]:
        for line in "".join(cell["source"]).splitlines():
            if cell["cell_type"] == "markdown" and line.startswith("# "):
                return line[2:].strip()
    return fallback


def _duration(entry) -> str:
    if not isinstance(entry, dict) or "seconds" not in entry:
        return "not measured yet"
    s = entry["seconds"]
    return "under 1 min" if s < 60 else f"about {round(s / 60)} min"


def lessons(notebooks: Path, timings: dict | None) -> list[dict]:
    """One ``{'file', 'title', 'time', 'exercises'}`` per course notebook, in order (the index's rows)."""
    timings = timings or {}
    rows = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        rows.append({"file": path.name, "title": _title(nb, path.stem), "exercises": exercises(nb),
                     "time": _duration(timings.get("notebooks", {}).get(path.stem))})
    return rows


def timings_machine(timings: dict | None) -> str:
    """Where the recorded notebook times were measured, in one phrase."""
    timings = timings or {}
    machine = timings.get("machine", {})
    where = (f"{machine.get('cpu', 'an unnamed CPU')}, {machine.get('cores', '?')} cores, "
             f"{timings.get('threads', '?')} torch thread(s) per notebook, {timings.get('workers', 1)} notebook(s) "
             f"at a time, {timings.get('date', 'no date')}")
    load = max(timings.get("load_average") or [0])
    if load > (machine.get("cores") or 0):
        where += f"; other work kept the load average near {load:.0f}, so expect less on an idle machine"
    return where


def index_notebook(notebooks: Path, timings: dict | None, solutions: str = "solutions") -> dict:
    """The index as a notebook of markdown cells: a table of the lessons, their times and their exercises."""
    rows = []
    for lesson in lessons(notebooks, timings):
        ex = "<br>".join(f"{n} {t}" for n, t in lesson["exercises"]) or "—"
        name = lesson["file"]
        rows.append(f"| [{lesson['title']}]({name}) | {lesson['time']} | {ex} | [solution]({solutions}/{name}) |")
    where = timings_machine(timings)
    intro = (
        "# Start here\n\n"
        "Open **00 · Why quantize?** first and take the notebooks in order: each builds on the one before. "
        "Run a notebook top to bottom (Shift+Enter, or *Run ▸ Run All Cells*).\n\n"
        "Cells marked **✏️ Exercise** hold a stub for you to fill in; the checker cell below each says "
        "exactly what is wrong. An exercise you have not done yet falls back to qtutor's own version "
        "(one printed line), so Run All always reaches the end. The solutions are one click away, in "
        f"`{solutions}/` (the course's own notebooks, with their outputs).\n\n"
        "Your copies are yours: `make course` never overwrites a notebook you have saved "
        "(`make student FORCE=1` regenerates all of them — save your work elsewhere first). "
        "This index is rebuilt at every `make course`; keep notes in another file."
    )
    table = (
        "| notebook | time to Run All | exercises | |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Times: wall time of Run All under the course's tests, measured on {where} "
        f"(`{TIMINGS.as_posix()}`). The first notebook that loads the model also builds its cache once, "
        "if `make course` has not already."
    )
    cells = [{"cell_type": "markdown", "metadata": {}, "source": s.splitlines(keepends=True)} for s in (intro, table)]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def prepare_learner_folder(repo: Path, out: Path, force: bool = False) -> dict[str, str]:
    """Learner copies, the index and the ``solutions`` link in ``out``; returns what happened to each copy."""
    notebooks = repo / "notebooks"
    done = write_learner_copies(notebooks, out, force=force)
    link = out / "solutions"
    target = os.path.relpath(notebooks, out)
    if link.is_symlink() and os.readlink(link) != target:
        link.unlink()
    if not link.exists() and not link.is_symlink():
        try:
            link.symlink_to(target, target_is_directory=True)
        except OSError:  # no symlinks (some Windows set-ups): the index then points at the folder itself
            pass
    solutions = "solutions" if link.is_symlink() else Path(target).as_posix()
    timings_path = repo / TIMINGS
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else None
    (out / INDEX).write_text(_dump(index_notebook(notebooks, timings, solutions)))
    return done


def _wants_browser() -> bool:
    """Open a browser only where one can appear: a headless Linux box would get a text browser or an error."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def course_command(folder: Path, port: int | None = None, browser: bool | None = None,
                   extra: list[str] | None = None) -> list[str]:
    """The ``jupyter lab`` command line that serves ``folder`` on 127.0.0.1 and opens the index."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}", "--ServerApp.ip=127.0.0.1",
           f"--LabApp.default_url=/lab/tree/{INDEX}"]
    if port is not None:  # an explicit port is a promise (the test relies on it): fail rather than move on
        cmd += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if not (_wants_browser() if browser is None else browser):
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses without it
        cmd.append("--allow-root")
    return cmd + list(extra or [])
