"""qtutor doctor --record / --check: record then check passes, drift is named, bad files give a clear error."""
import json

import pytest
import torch

from qtutor.cli import main
from qtutor.diagnose import baseline


def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    return model, torch.randint(0, 96, (1, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_stack(monkeypatch):
    model, ids = tiny()
    monkeypatch.setattr(baseline, "_real_model_and_ids", lambda: (model, ids))
    return model, ids


def test_record_then_check_is_the_same(tmp_path, tiny_stack, capsys):
    path = tmp_path / "base.json"
    assert main(["doctor", "--record", str(path)]) == 0
    base = json.loads(path.read_text())
    assert base["format"] == baseline.FORMAT
    for key in ("torch", "device", "cpu_model", "cpu_flags", "torch_threads", "seed"):
        assert key in base["environment"]
    assert set(base["outputs"]) == {"logits_sha256", "logits_max_abs", "logits_sum", "kl_w4g64", "perplexity"}
    assert base["outputs"]["kl_w4g64"] > 0
    assert main(["doctor", "--check", str(path)]) == 0
    assert "within tolerance" in capsys.readouterr().out


def test_thread_count_and_tampered_value_are_named(tmp_path, tiny_stack, capsys):
    path = tmp_path / "base.json"
    baseline.record(path)
    base = json.loads(path.read_text())
    base["environment"]["torch_threads"] += 7
    base["outputs"]["perplexity"] *= 1.01
    path.write_text(json.dumps(base))
    assert main(["doctor", "--check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "environment.torch_threads" in out and "outputs.perplexity" in out and "9.90e-03" in out
    assert "kl_w4g64" not in out


def test_compare_names_hash_and_numbers():
    base = {"environment": {"torch": "1"}, "outputs": {"logits_sha256": "a" * 64, "kl_w4g64": 1.0}}
    now = {"environment": {"torch": "2"}, "outputs": {"logits_sha256": "b" * 64, "kl_w4g64": 1.0 + 1e-6}}
    drift = baseline.compare(base, now)
    assert len(drift) == 2 and drift[0].startswith("environment.torch") and "logits_sha256" in drift[1]


@pytest.mark.parametrize("content,match", [(None, "no such baseline"), ("{not json", "not valid JSON"),
                                           ('{"format": "other"}', "not a qtutor baseline"),
                                           (json.dumps({"format": baseline.FORMAT, "outputs": {}}), "environment")])
def test_bad_file_is_a_clear_error(tmp_path, content, match, capsys):
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(baseline.BaselineError, match=match):
        baseline.load_baseline(path)
    assert main(["doctor", "--check", str(path)]) == 2
    assert match in capsys.readouterr().err


def test_measure_refuses_bad_ids():
    model, ids = tiny()
    with pytest.raises(ValueError, match="int64"):
        baseline.measure(model, ids.float())


def test_drill_moves_one_variable_at_a_time():
    model, ids = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = baseline.drill(model, ids)
    by = {r["variable"]: r for r in rows}
    assert by["compute dtype"]["perplexity"] > by["torch threads"]["perplexity"]  # bf16 moves more than threads
    assert by["compute dtype"]["logits_max_abs"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    assert next(model.parameters()).dtype == torch.float32


def test_record_real_model(tmp_path, smollm2):
    path = tmp_path / "base.json"
    base = baseline.record(path)
    assert 1 < base["outputs"]["perplexity"] < 1000 and base["outputs"]["kl_w4g64"] > 0
    assert baseline.compare(base, baseline.collect_baseline()) == []
