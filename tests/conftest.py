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


# --- a tiny random Llama for the nn/ and formats/ tests -----------------------------------------

def _make_tiny_llama(seed: int = 0, **overrides):
    """A random 2-block Llama (hidden 64, MLP 128, grouped-query attention): every code path, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


@pytest.fixture(scope="session")
def make_tiny_llama():
    """The factory: ``make_tiny_llama(seed=0, **LlamaConfig overrides)``."""
    return _make_tiny_llama


@pytest.fixture
def tiny_llama():
    return _make_tiny_llama()


@pytest.fixture
def tiny_ids():
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
