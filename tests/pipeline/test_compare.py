"""compare: methods chosen by config type; the row labels the notebooks' tables show stay the same."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qtutor.config import AWQConfig, GPTQConfig, NF4Config, RTNConfig
from qtutor.model import decoder_linears
from qtutor.pipeline.compare import WeightFormat, method_configs, method_label, quantize_copy
from qtutor.primitives import rtn_grid_quantize


def test_labels_are_the_tables_names():
    labels = [method_label(c) for c in method_configs(WeightFormat(4, 128))]
    assert labels == ["RTN", "GPTQ", "GPTQ act-order", "AWQ"]
    assert all((c.n_bits, c.group_size) == (4, 128) for c in method_configs(WeightFormat(4, 128)))


@pytest.mark.parametrize("config", ["GPTQ", NF4Config()], ids=["string", "nf4"])
def test_other_configs_are_refused(config):
    with pytest.raises(ValueError, match="takes RTNConfig, GPTQConfig or AWQConfig"):
        method_label(config)
    with pytest.raises(ValueError, match="takes RTNConfig, GPTQConfig or AWQConfig"):
        quantize_copy(torch.nn.Linear(2, 2), config, torch.zeros(1, 4, dtype=torch.long))


def _tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_rtn_copy_is_the_grid_and_leaves_the_model(symmetric):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q, seconds = quantize_copy(model, RTNConfig(3, 32, symmetric), calib=None)
    assert seconds >= 0 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for name, lin in decoder_linears(q).items():
        want = rtn_grid_quantize(before[f"{name}.weight"], 3, 32, symmetric).dequantize()
        assert torch.equal(lin.weight, want), name


@pytest.mark.parametrize("config", [GPTQConfig(4, 32), AWQConfig(4, 32, n_grid=2)], ids=["gptq", "awq"])
def test_calibrated_methods_run_on_a_copy(config):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    q, _ = quantize_copy(model, config, calib, batch_size=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    lin = decoder_linears(q)["model.layers.0.mlp.up_proj"].weight
    assert not torch.equal(lin, before["model.layers.0.mlp.up_proj.weight"])
    assert torch.unique(lin[0, :32]).numel() <= 16  # one group: at most 2⁴ levels


@pytest.mark.parametrize("config, label", [(RTNConfig(3, 32), "RTN"), (GPTQConfig(4, 32, act_order=True), "GPTQ act-order")],
                         ids=["rtn", "gptq-act-order"])
def test_row_carries_the_tables_label_and_format(monkeypatch, config, label):
    """The row notebooks 07 and 08 show: its method label and format come from the config alone."""
    from qtutor.pipeline import compare

    monkeypatch.setattr(compare, "perplexity", lambda model, tok, cfg: 12.5)
    monkeypatch.setattr(compare, "logit_agreement", lambda model, ref: {"kl": 0.1, "top1": 0.9})
    calib = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    row = compare.weight_only_row(_tiny(), None, config, calib, reference=None, eval_config=None, batch_size=2)
    assert row["method"] == label and row["format"] == f"W{config.n_bits} g32"
    assert (row["n_bits"], row["group_size"], row["perplexity"]) == (config.n_bits, 32, 12.5)
    assert row["bits_per_weight"] == pytest.approx(config.n_bits + (16 + config.n_bits) / 32)
