"""The package's layers, as STYLE.md draws them: primitives → methods → modules → model pipeline → formats,
with the Triton kernels beside them as a leaf. A lower layer never imports a higher one.

Read from the source with ``ast`` (nothing is imported), so a forbidden import inside a function
body is caught as well as one at the top of a file.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package folder (or module file) -> qtutor sub-packages it must never import
FORBIDDEN = {
    "kernels": {"*"},  # a leaf: nothing from qtutor at all
    "qtutor/primitives": {"methods", "nn", "pipeline", "formats", "gguf", "model", "course", "checks",
                          "exercises", "config", "eval", "data", "learner", "cli"},
    "qtutor/methods": {"nn", "pipeline", "formats", "gguf", "course", "checks", "exercises", "learner", "cli"},
    "qtutor/nn": {"pipeline", "formats", "course", "checks", "exercises", "learner", "cli"},
    # configs are data beside the methods (AWQConfig lives in methods/awq.py): no pipeline, no modules
    "qtutor/config.py": {"nn", "pipeline", "formats", "gguf", "course", "checks", "exercises", "learner", "cli"},
    "qtutor/formats": {"methods"},
    "qtutor/gguf": {"methods", "nn", "pipeline", "formats"},
    "qtutor/kvcache": {"pipeline", "formats", "gguf", "course", "checks", "exercises", "learner", "cli"},
}


def _imported_qtutor_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of qtutor code in ``path``, relative imports resolved to ``qtutor.…``."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]  # e.g. ("qtutor", "formats")
    if package and package[0] == "kernels":
        package = ("qtutor", "kernels") + package[1:]  # installed as qtutor.kernels
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "qtutor"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found += [(node.lineno, m) for m in names if m.split(".")[0] == "qtutor"]
    return found


def _files(folder: str) -> list[Path]:
    path = ROOT / folder
    return [path] if path.suffix == ".py" and path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_import_from_a_higher_layer(folder):
    forbidden = FORBIDDEN[folder]
    assert _files(folder), f"{folder} has no Python files: the table is out of date"
    bad = []
    for path in _files(folder):
        for line, module in _imported_qtutor_modules(path):
            parts = module.split(".")
            if folder == "kernels":
                if parts[:2] != ["qtutor", "kernels"]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            elif len(parts) > 1 and parts[1] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, f"{folder} must not import {sorted(forbidden)}:\n" + "\n".join(bad)


def test_resolver_sees_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a relative import two levels up resolves to the right qtutor module."""
    path = ROOT / "qtutor" / "formats" / "_probe_for_test.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from ..methods.gptq import GPTQ\nfrom . import registry\n")
    assert _imported_qtutor_modules(path) == [(1, "qtutor.methods.gptq"), (2, "qtutor.formats.registry")]


@pytest.mark.parametrize("module", ["qtutor.config", "qtutor.nn"])
def test_importing_does_not_load_the_pipeline(module):
    """The ast check sees one file's own imports; this one follows them all: importing ``module`` in a fresh
    interpreter leaves ``qtutor.pipeline`` unloaded (configs and modules stand below the model pipeline)."""
    code = (f"import sys, {module}; loaded = sorted(m for m in sys.modules if m.startswith('qtutor.pipeline')); "
            "assert not loaded, loaded")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert run.returncode == 0, run.stderr[-2000:]
