import copy

import pytest
import torch

from qtutor.data import calibration_samples


@pytest.fixture(scope="module")
def small_model(smollm2):
    """The real SmolLM2 cut to its first 3 blocks (a fresh copy per test module)."""
    model, tok = smollm2
    small = copy.deepcopy(model)
    del small.model.layers[3:]
    small.config.num_hidden_layers = 3
    return small, tok


@pytest.fixture(scope="module")
def calib(smollm2):
    return calibration_samples(smollm2[1], n_samples=4, seq_len=64, seed=0)
