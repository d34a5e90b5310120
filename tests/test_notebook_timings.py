"""The notebook timer (root conftest.py) and scripts/update_timings.py, which feed the learner's index."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timer = _load(ROOT / "conftest.py", "qtutor_root_conftest")
update = _load(ROOT / "scripts" / "update_timings.py", "qtutor_update_timings")


def test_machine_info_names_the_cpu_and_its_int8_flags():
    info = timer.machine_info()
    assert info["cpu"] and info["cores"] >= 1
    if Path("/proc/cpuinfo").is_file():
        assert {"avx512f", "avx512_vnni", "avx_vnni", "amx"} <= set(info["flags"])
        assert all(isinstance(v, bool) for v in info["flags"].values())


def test_merge_replaces_measured_keeps_old_and_never_invents():
    run = {"machine": {"cpu": "New CPU", "cores": 2}, "threads": 1, "workers": 2, "date": "2026-12-02",
           "notebooks": {"00_a": {"seconds": 40.0, "cells": 3, "outcome": "passed"}}}
    old = {"notebooks": {"00_a": {"seconds": 90.0}, "01_b": {"seconds": 70.0, "cpu": "Old CPU"}}}
    merged = update.merge(old, run, ["00_a", "01_b", "02_c"])
    assert merged["notebooks"]["00_a"] == {"seconds": 40.0, "cells": 3, "outcome": "passed", "cpu": "New CPU (2 cores)",
                                           "threads": 1, "workers": 2, "date": "2026-12-02"}
    assert merged["notebooks"]["01_b"] == old["notebooks"]["01_b"]
    assert merged["notebooks"]["02_c"] == "not measured yet"
    assert merged["machine"]["cpu"] == "New CPU" and "about" in merged


def test_committed_record_covers_every_notebook():
    record = json.loads((ROOT / "benchmarks" / "results" / "notebook_timings.json").read_text())
    names = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(record["notebooks"]) == names, "run `make timings` (or scripts/update_timings.py) after adding a notebook"
    for entry in record["notebooks"].values():
        assert entry == "not measured yet" or {"seconds", "cpu", "threads", "date"} <= set(entry)


def _notebook(source: str, output: str) -> str:
    cell = {"cell_type": "code", "execution_count": 1, "metadata": {}, "source": [source],
            "outputs": [{"output_type": "stream", "name": "stdout", "text": [output]}]}
    return json.dumps({"cells": [cell, cell | {"execution_count": 2}], "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5})


@pytest.mark.slow
def test_nbval_under_xdist_sums_each_notebook_and_writes_the_record(tmp_path):
    """Two notebooks over two workers (make test's settings): outputs compared, both timed by the controller."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "00_threads.ipynb").write_text(_notebook("import os; print(os.environ['QTUTOR_THREADS'])", "1\n"))
    (tmp_path / "01_wrong.ipynb").write_text(_notebook("print(1 + 1)", "3\n"))
    env = os.environ | {"QTUTOR_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                           "-n", "2", "--dist", "loadscope", "00_threads.ipynb", "01_wrong.ipynb"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "2 failed, 2 passed" in done.stdout, done.stdout  # 01's printed 2 is compared with its stored 3
    assert "notebook wall times" in done.stdout
    record = json.loads((tmp_path / "build" / "notebook_timings.json").read_text())
    assert record["notebooks"]["00_threads"]["outcome"] == "passed"
    assert record["notebooks"]["01_wrong"] == record["notebooks"]["01_wrong"] | {"cells": 2, "outcome": "failed"}
    assert record["threads"] == 1 and record["workers"] == 2 and record["notebooks"]["00_threads"]["seconds"] > 0
