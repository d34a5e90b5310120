"""Copy the last nbval run's notebook wall times into the committed record that the learner's index reads.

    python scripts/update_timings.py [--run build/notebook_timings.json]
                                     [--record benchmarks/results/notebook_timings.json]

``build/notebook_timings.json`` is written by the root conftest.py at the end of every
nbval run. A notebook measured in that run gets the new entry (its time, the CPU, the
thread count and the date travel with it); one the run did not cover keeps its old
entry, or reads "not measured yet": a number is never invented.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABOUT = ("Wall time of each course notebook under nbval (sum of its cells' setup, call and teardown, kernel start "
         "included). Refreshed by `make timings` from build/notebook_timings.json, which the root conftest.py "
         "writes after every nbval run; the top-level machine, threads and date are those of the latest run "
         "merged in, and each notebook's entry names its own.")


def merge(record: dict | None, run: dict, names: list[str]) -> dict:
    """The record with every notebook of ``run`` replaced and the rest kept (or "not measured yet")."""
    old = (record or {}).get("notebooks", {})
    cpu = f"{run['machine']['cpu']} ({run['machine']['cores']} cores)"
    notebooks = {}
    for name in names:
        if name in run["notebooks"]:
            notebooks[name] = run["notebooks"][name] | {"cpu": cpu, "threads": run["threads"],
                                                          "workers": run["workers"], "date": run["date"]}
        else:
            notebooks[name] = old.get(name, "not measured yet")
    head = {k: v for k, v in run.items() if k != "notebooks"}
    return {"about": ABOUT} | head | {"notebooks": notebooks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "build" / "notebook_timings.json")
    parser.add_argument("--record", type=Path, default=ROOT / "benchmarks" / "results" / "notebook_timings.json")
    args = parser.parse_args()
    if not args.run.is_file():
        raise SystemExit(f"{args.run} not found: run nbval first (make test, or pytest --nbval … notebooks/NN_*.ipynb)")
    run = json.loads(args.run.read_text())
    record = json.loads(args.record.read_text()) if args.record.is_file() else None
    names = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    merged = merge(record, run, names)
    args.record.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    for name, entry in merged["notebooks"].items():
        print(f"{name:40} {entry['seconds'] if isinstance(entry, dict) else entry}")
    print(f"written to {args.record}")


if __name__ == "__main__":
    main()
