"""Write learner copies of the course notebooks: solutions replaced by stubs, outputs cleared.

The committed notebooks hold each exercise's solution between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION``.  This script replaces every such
region by ``raise NotImplementedError(...)`` at the same indentation.

    python scripts/make_student_notebooks.py [--out student/]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write your solution here")'


def strip_solutions(source: str) -> str:
    """Replace each BEGIN/END SOLUTION region of a cell's source by a stub."""
    out, inside = [], False
    for line in source.splitlines(keepends=True):
        if line.strip() == BEGIN:
            if inside:
                raise ValueError("nested BEGIN SOLUTION")
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out.append(f"{indent}{STUB}\n")
        elif line.strip() == END:
            if not inside:
                raise ValueError("END SOLUTION without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("BEGIN SOLUTION without END")
    return "".join(out)


def student_notebook(nb: dict) -> dict:
    """A copy of notebook ``nb`` with solutions stubbed and outputs cleared."""
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        cell["source"] = strip_solutions(src).splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--out", type=Path, default=root / "student")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = student_notebook(json.loads(path.read_text()))
        (args.out / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.out / path.name}")


if __name__ == "__main__":
    main()
