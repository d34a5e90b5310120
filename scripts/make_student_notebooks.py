"""Write learner copies of the course notebooks: solutions replaced by stubs, outputs cleared.

The committed notebooks hold each exercise's solution between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION``; ``qtutor.learner`` replaces every
such region by ``raise NotImplementedError(...)`` at the same indentation. Copies
that already exist and were edited are kept unless ``--force`` is given.
``qtutor course`` (``make course``) does the same and also writes the index.

    python scripts/make_student_notebooks.py [--out student/] [--force]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from qtutor.learner import strip_solutions, student_notebook, write_learner_copies  # noqa: F401 (re-exported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--out", type=Path, default=root / "student")
    parser.add_argument("--force", action="store_true", help="replace copies even if they were edited")
    args = parser.parse_args()
    for name, status in write_learner_copies(root / "notebooks", args.out, force=args.force).items():
        print(f"{status:>9}: {args.out / name}")


if __name__ == "__main__":
    main()
