"""Build the executed course as a static site: build/site/index.html.

    python scripts/build_site.py [--out build/site]

Sphinx with MyST-NB (docs/site/conf.py) renders every notebook in notebooks/ with the outputs it carries — the
outputs ``make test`` has just compared, cell by cell, with a fresh nbval execution — so the site shows what the
tests executed without running anything twice. Beside the notebooks: an index (the lessons, their measured
Run-All times and exercises, as START_HERE.ipynb lists them) and a page of the recorded results
(benchmarks/results/*.json: machine, date, versions and the command of each run).

Sphinx runs with warnings as errors, so a link from one notebook to another that does not resolve fails the
build; afterwards every local ``href``/``src`` of every page is checked to exist in the built site.
"""
from __future__ import annotations

import argparse
import html.parser
import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtutor.learner import TIMINGS, lessons, timings_machine  # noqa: E402


def index_page(notebooks: Path, timings: dict | None) -> str:
    rows = []
    for lesson in lessons(notebooks, timings):
        ex = "<br>".join(f"{n} {t}" for n, t in lesson["exercises"]) or "—"
        rows.append(f"| [{lesson['title']}]({lesson['file']}) | {lesson['time']} | {ex} |")
    toc = "\n".join(lesson["file"] for lesson in lessons(notebooks, timings))
    return f"""# qtutor — quantizing large language models, hands-on

Every method is built from scratch and run on a real model, SmolLM2-135M-Instruct, and checked against the tools
practitioners use (bitsandbytes, llama.cpp, the GPTQ and AWQ reference code). These pages are the course's
notebooks as its tests executed them: every output below was compared with a fresh run by nbval before this site
was built. To run them yourself, clone the repository and run `make course` (the README says more).

| notebook | time to Run All | exercises |
|---|---|---|
{chr(10).join(rows)}

Times: wall time of Run All under the course's tests, measured on {timings_machine(timings)}
(`{TIMINGS.as_posix()}`).

GPU figures in the notebooks are loaded from recorded runs, each labelled where it is shown; the
[recorded results](recorded_results.md) page lists them all.

```{{toctree}}
:hidden:
:maxdepth: 1

{toc}
recorded_results
```
"""


def _first(rec: dict, *keys):
    for k in keys:
        v = rec.get(k)
        if v:
            return v[0] if isinstance(v, list) else v
    return None


def _record_row(name: str, rec) -> str:
    """One table row for a recorded result: where, when, with what, by which command (as the file says)."""
    runs = rec if isinstance(rec, list) else [rec]
    rec = runs[0] if runs and isinstance(runs[0], dict) else {}
    recorded = rec.get("recorded") if isinstance(rec.get("recorded"), dict) else {}
    rec = {**recorded, **rec}
    machine = _first(rec, "device", "machine")
    if isinstance(machine, dict):
        machine = machine.get("cpu") or machine.get("model") or machine.get("name")
    if machine is None and isinstance(rec.get("cpu"), dict):
        machine = rec["cpu"].get("model")
    versions = rec.get("versions") or ({"torch": rec["torch"]} if isinstance(rec.get("torch"), str) else {})
    vtext = ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) else str(versions)
    date = str(_first(rec, "date_utc", "date", "dates") or "—")[:10]
    command = _first(rec, "command", "commands")
    command = "`" + str(command).replace("|", "\\|") + "`" if command else "—"
    what = " ".join(str(rec.get("what") or rec.get("benchmark") or "").split())
    what = what if len(what) <= 160 else what[:157] + "…"
    more = f" (+{len(runs) - 1} more runs)" if len(runs) > 1 else ""
    return f"| `{name}` | {machine or '—'} | {date} | {vtext or '—'} | {command}{more} | {what or '—'} |"


def results_page(results: Path) -> str:
    rows = []
    for path in sorted(results.glob("*.json")):
        if path.name == TIMINGS.name:
            continue
        try:
            rows.append(_record_row(path.name, json.loads(path.read_text())))
        except (json.JSONDecodeError, AttributeError, TypeError):
            rows.append(f"| `{path.name}` | — | — | — | — | not a run record |")
    return ("# Recorded results\n\n"
            "Runs that need a GPU, or take too long on two CPU cores, were made with the scripts in `benchmarks/` and "
            "recorded in `benchmarks/results/`; the notebooks load these files and label each figure with its run "
            "(machine, date, command). Comparisons against llama.cpp built from source are recorded there too.\n\n"
            "| file | machine | date | versions | command | what |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def broken_links(site: Path) -> list[str]:
    """Every local link of every page of ``site`` whose target file is missing, as 'page -> link'."""
    broken = []
    for page in sorted(site.rglob("*.html")):
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("#", "mailto:", "data:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if parts.path and not target.exists():
                broken.append(f"{page.relative_to(site)} -> {link}")
    return broken


def build(out: Path, src: Path, notebooks: Path = ROOT / "notebooks") -> None:
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "site" / "conf.py", src / "conf.py")
    for nb in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, src / nb.name)
    timings_path = ROOT / TIMINGS
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else None
    (src / "index.md").write_text(index_page(notebooks, timings))
    (src / "recorded_results.md").write_text(results_page(ROOT / "benchmarks" / "results"))
    if out.exists():
        shutil.rmtree(out)
    subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src), str(out)],
                   check=True)
    broken = broken_links(out)
    if broken:
        raise SystemExit(f"{len(broken)} broken local links in the site, e.g.:\n" + "\n".join(broken[:20]))
    pages = len(list(out.glob("*.html")))
    print(f"{out}/index.html: {pages} pages, every local link resolves")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--src", type=Path, default=ROOT / "build" / "site-src")
    args = parser.parse_args()
    build(args.out.resolve(), args.src.resolve())


if __name__ == "__main__":
    main()
