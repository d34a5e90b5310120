import os
import sys
from pathlib import Path

# Triton kernels run in the interpreter on machines without a GPU; the variable must be
# set before triton is first imported (bitsandbytes imports it too).
try:
    import subprocess

    _has_gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
except OSError:
    _has_gpu = False
if not _has_gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The repository root must not be importable as a top-level path: its kernels/ folder
# would shadow the `kernels` package that bitsandbytes looks for (`python -m pytest`
# puts the working directory on sys.path).
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs the real model (directly or through another fixture) ``model`` and ``slow``.

    ``make test-fast`` deselects ``slow``; marking by fixture means a new real-model test
    cannot slip into the fast lane by forgetting a decorator.
    """
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2():
    """The real course model and tokenizer (float cache; built on first use)."""
    from qtutor.model import load_model

    torch.manual_seed(0)
    return load_model()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
