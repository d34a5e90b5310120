"""Notebook wall times under nbval: a per-notebook table at the end of the run, and build/notebook_timings.json.

nbval makes every cell a test item (``notebooks/NN_topic.ipynb::Cell 3``); the kernel
starts in the first cell's setup and stops in the last cell's teardown, so the sum of
the setup, call and teardown durations of a notebook's cells is the notebook's wall
time in its worker. Under pytest-xdist the workers' reports reach the controller,
which alone prints and writes. ``make timings`` (scripts/update_timings.py) copies the
numbers into the committed benchmarks/results/notebook_timings.json that the learner's
index reads.

This is a root-level conftest rather than a file in notebooks/ (the lessons folder
holds lessons only) or tests/ (``pytest notebooks`` would not load it from there).
"""
from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import pytest

TIMINGS_OUT = Path("build") / "notebook_timings.json"
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def machine_info() -> dict:
    """CPU model, core count and the int8-relevant instruction-set flags (from /proc/cpuinfo on Linux)."""
    info: dict = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info | {"flags": "unknown (no /proc/cpuinfo)"}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    info["cpu"] = fields.get("model name", info["cpu"])
    info["flags"] = {f: f in flags for f in _FLAGS}
    info["flags"]["amx"] = any(f.startswith("amx") for f in flags)
    return info


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


class NotebookTimer:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.seconds: dict[str, float] = defaultdict(float)
        self.cells: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.load_start = _load()

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::")[0]
        if not path.endswith(".ipynb"):
            return
        name = Path(path).stem
        self.seconds[name] += report.duration
        if report.when == "call":
            self.cells[name] += 1
        if report.failed:
            self.failed[name] += 1

    def record(self) -> dict:
        return {
            "machine": machine_info(),
            "python": platform.python_version(),
            "torch": md.version("torch"),
            # the notebooks' torch thread count (qtutor.course.setup_notebook reads QTUTOR_THREADS, default 2)
            "threads": int(os.environ.get("QTUTOR_THREADS", "2")),
            "workers": getattr(self.config.option, "numprocesses", None) or 1,
            "date": datetime.date.today().isoformat(),
            # other work on the machine stretches every time: the 1-minute load average, start and end
            "load_average": [self.load_start, _load()],
            "command": "pytest " + " ".join(self.config.invocation_params.args),
            "notebooks": {
                name: {"seconds": round(self.seconds[name], 1), "cells": self.cells[name],
                       "outcome": "failed" if self.failed[name] else "passed"}
                for name in sorted(self.seconds)
            },
        }

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.seconds:
            return
        record = self.record()
        tr = terminalreporter
        tr.section("notebook wall times")
        for name, row in record["notebooks"].items():
            tr.write_line(f"{row['seconds']:8.1f} s  {row['cells']:3d} code cells  {row['outcome']:6}  {name}")
        tr.write_line(f"{sum(self.seconds.values()):8.1f} s  in all, {record['threads']} torch thread(s) per "
                      f"notebook, {record['workers']} worker(s), on {record['machine']['cpu']}")
        out = Path(self.config.rootpath) / TIMINGS_OUT
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
        tr.write_line(f"written to {TIMINGS_OUT}; `make timings` copies it into the committed record")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # xdist workers only send reports; the controller sums them
        config.pluginmanager.register(NotebookTimer(config), "qtutor-notebook-timer")
