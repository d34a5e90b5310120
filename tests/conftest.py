import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """The real course model and tokenizer (float cache; built on first use)."""
    from qtutor.model import load_model

    torch.manual_seed(0)
    return load_model()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
