"""The static site's builder (scripts/build_site.py): its pages, its link check, and a Sphinx build that fails on a
link from one notebook to a missing one."""
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_site", ROOT / "scripts" / "build_site.py")
build_site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_site)

pytest.importorskip("myst_nb")


def test_index_lists_every_notebook_with_its_time_and_exercises():
    timings = json.loads((ROOT / "benchmarks" / "results" / "notebook_timings.json").read_text())
    text = build_site.index_page(ROOT / "notebooks", timings)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"]({path.name})" in text and f"\n{path.name}\n" in text  # table row and toctree entry
    assert "18.1 quantize within the budget" in text and "not measured yet" not in text


def test_results_page_names_machine_date_and_command_of_each_record():
    text = build_site.results_page(ROOT / "benchmarks" / "results")
    assert "notebook_timings.json" not in text
    row = next(line for line in text.splitlines() if "`mixed_precision_h200.json`" in line)
    assert "NVIDIA H200" in row and "2026-12-01" in row and "benchmarks/mixed_precision.py" in row
    row = next(line for line in text.splitlines() if "`gptq_awq_8b_h100.json`" in line)
    assert "H100" in row and "(+1 more runs)" in row


def test_broken_links(tmp_path):
    (tmp_path / "a.html").write_text('<a href="b.html#x">b</a><a href="missing.html">m</a><img src="_static/i.png">'
                                     '<a href="https://example.org/">e</a><a href="#top">t</a>')
    (tmp_path / "b.html").write_text("<p>b</p>")
    assert build_site.broken_links(tmp_path) == ["a.html -> missing.html", "a.html -> _static/i.png"]


def _two_notebooks(folder: Path, link: str) -> Path:
    folder.mkdir()
    for name in ("00_why_quantize.ipynb", "01_scale_and_zero_point.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    nb = json.loads((folder / "01_scale_and_zero_point.ipynb").read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": [f"See [the first lesson]({link})."]})
    (folder / "01_scale_and_zero_point.ipynb").write_text(json.dumps(nb))
    return folder


def test_build_resolves_a_link_between_notebooks(tmp_path):
    notebooks = _two_notebooks(tmp_path / "nb", "00_why_quantize.ipynb")
    build_site.build(tmp_path / "site", tmp_path / "src", notebooks)
    page = (tmp_path / "site" / "01_scale_and_zero_point.html").read_text()
    assert 'href="00_why_quantize.html"' in page and (tmp_path / "site" / "recorded_results.html").is_file()


def test_build_fails_on_a_link_to_a_missing_notebook(tmp_path):
    notebooks = _two_notebooks(tmp_path / "nb", "02_granularity.ipynb")
    with pytest.raises(subprocess.CalledProcessError):
        build_site.build(tmp_path / "site", tmp_path / "src", notebooks)
