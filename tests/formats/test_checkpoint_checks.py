"""Checkpoints of a tiny random Llama: every layout round-trips without repacking GPTQ, loading checks every
tensor against the config and the model, corrupt files are clear errors, saving is atomic."""
import copy
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from qtutor.formats import checkpoint, layouts, registry
from qtutor.formats.checkpoint import load_quantized, save_quantized
from qtutor.model import decoder_linears
from qtutor.nn import W4A16Linear
from qtutor.nn import w4a16 as nn_w4a16
from qtutor.primitives import rtn_grid_quantize


@pytest.fixture(scope="module")
def quantized(make_tiny_llama):
    model = make_tiny_llama()
    return model, {n: rtn_grid_quantize(m.weight.detach(), 4, 32) for n, m in decoder_linears(model).items()}


@pytest.fixture(scope="module")
def saved(quantized, tmp_path_factory):
    model, results = quantized
    return save_quantized(model, results, tmp_path_factory.mktemp("ckpt") / "gptq", "gptq")


@pytest.fixture
def folder(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "ckpt")


def _fake(model, results, scale_dtype):
    m = copy.deepcopy(model)
    for n, lin in decoder_linears(m).items():
        qw = copy.copy(results[n])
        qw.scale = qw.scale.to(scale_dtype).float()
        lin.weight.data = qw.dequantize()
    return m


IDS = torch.tensor([[1, 5, 17, 42, 3, 88]])


@pytest.mark.parametrize("fmt", checkpoint.FORMATS)
def test_round_trip(quantized, tmp_path, fmt):
    model, results = quantized
    loaded = load_quantized(save_quantized(model, results, tmp_path / fmt, fmt))
    assert all(isinstance(loaded.get_submodule(n), W4A16Linear) for n in results)
    want = _fake(model, results, torch.float32 if fmt == "compressed-tensors" else torch.float16)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, want(IDS).logits)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_files_load_without_repacking(quantized, tmp_path, monkeypatch, fmt):
    model, results = quantized
    folder = save_quantized(model, results, tmp_path / fmt, fmt)

    def no_repacking(*a, **k):
        raise AssertionError("pack_gptq called while loading a GPTQ checkpoint")

    for module in (layouts, registry):
        monkeypatch.setattr(module, "pack_gptq", no_repacking)
    monkeypatch.setattr(nn_w4a16, "pack", no_repacking)
    loaded = load_quantized(folder)
    stored = load_file(str(folder / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    assert torch.equal(loaded.get_submodule(name).qweight, stored[f"{name}.qweight"])  # the file's words, as they are
    if fmt == "gptq_v2":
        assert torch.equal(loaded.get_submodule(name).qzeros, stored[f"{name}.qzeros"])


def _rewrite(folder, tensors=None, config=None):
    if tensors is not None:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def _tensors(folder):
    return load_file(str(folder / "model.safetensors"))


def _config(folder):
    return json.loads((folder / "config.json").read_text())


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("change, match", [
    (lambda t, c: t.update({f"{Q}.qweight": t[f"{Q}.qweight"].to(torch.int64)}),
     rf"tensor '{Q}.qweight' is int64 \(8, 64\), expected int32 \(8, 64\)"),
    (lambda t, c: t.update({f"{Q}.scales": t[f"{Q}.scales"].to(torch.int32)}),
     rf"tensor '{Q}.scales' is int32"),
    (lambda t, c: t.update({f"{Q}.g_idx": t[f"{Q}.g_idx"][:-1].clone()}),
     rf"tensor '{Q}.g_idx' is int32 \(63,\), expected int32 \(64,\)"),
    (lambda t, c: t.pop(f"{Q}.qzeros"), rf"tensor '{Q}.qzeros' is missing"),
    (lambda t, c: t.update({f"{Q}.extra": torch.zeros(1)}), rf"tensor '{Q}.extra' is not part of the gptq layout"),
    (lambda t, c: t.update({"model.surprise": torch.zeros(1)}), r"tensor 'model.surprise' has no place"),
    (lambda t, c: t.update({"model.norm.weight": torch.ones(65)}),
     r"tensor 'model.norm.weight' is float32 \(65,\), expected float16 or bfloat16 or float32 \(64,\)"),
    (lambda t, c: c.update(num_hidden_layers=3), r"tensor 'model.layers.2.self_attn.q_proj.qweight' is missing"),
    (lambda t, c: c.update(num_hidden_layers=1),
     r"tensor 'model.layers.1\..*' belongs to layer 1, but the config has num_hidden_layers=1"),
    (lambda t, c: c.update(intermediate_size=96), r"tensor 'model.layers.0.mlp.gate_proj.qweight' is int32 \(8, 128\), "
                                                 r"expected int32 \(8, 96\)"),
    (lambda t, c: c["quantization_config"].update(bits=8), rf"tensor '{Q}.qweight' is int32 \(8, 64\), expected int32 \(16, 64\)"),
    (lambda t, c: c["quantization_config"].update(group_size=16), rf"tensor '{Q}.qzeros' is int32 \(2, 8\), expected int32 \(4, 8\)"),
    (lambda t, c: t.update({f"{Q}.g_idx": torch.full((64,), 9, dtype=torch.int32)}),
     rf"layer {Q}: g_idx values must lie in \[0, 2\)"),
], ids=["qweight-int64", "scales-int", "g_idx-short", "qzeros-missing", "extra-tensor", "unknown-tensor",
        "norm-shape", "fewer-layers-in-file", "more-layers-in-file", "intermediate-size", "bits", "group-size",
        "g_idx-range"])
def test_loading_checks_every_tensor(folder, change, match):
    tensors, config = _tensors(folder), _config(folder)
    change(tensors, config)
    _rewrite(folder, tensors, config)
    with pytest.raises(ValueError, match=match):
        load_quantized(folder)


def test_config_errors_name_the_file(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_quantized(folder)
    _rewrite(folder, config={"model_type": "llama"})
    with pytest.raises(ValueError, match=r"config.json has no quantization_config"):
        load_quantized(folder)


def test_truncated_file_names_the_layer(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ValueError, match=r"model.safetensors: tensor '.*' \(layer .*\).*truncated"):
        load_quantized(folder)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_never_crashes_deep_inside(saved, tmp_path, data):
    """Truncated anywhere, or 1–3 bytes of the header flipped: loads, or a ValueError naming the file."""
    blob = bytearray((saved / "model.safetensors").read_bytes())
    n = 8 + int.from_bytes(blob[:8], "little")
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            blob[data.draw(st.integers(0, n - 1), label="at")] ^= data.draw(st.integers(1, 255), label="mask")
    folder = shutil.copytree(saved, Path(tempfile.mkdtemp(dir=tmp_path)) / "ckpt")
    (folder / "model.safetensors").write_bytes(bytes(blob))
    try:
        load_quantized(folder)
    except ValueError as e:
        assert "model.safetensors" in str(e)


def test_failed_save_keeps_the_old_checkpoint(quantized, folder, monkeypatch):
    model, results = quantized
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_save_file(tensors, path, metadata=None):
        open(path, "wb").write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", broken_save_file)
    with pytest.raises(OSError, match="No space left"):
        save_quantized(model, results, folder, "awq")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt"]  # no temporary folder left
    assert isinstance(load_quantized(folder).get_submodule(Q), W4A16Linear)


def test_failed_layer_is_named_before_anything_is_written(quantized, folder):
    model, results = quantized
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad = dict(results)
    qw = copy.copy(bad[Q])
    qw.g_idx = qw.g_idx.flip(0).contiguous()  # act-order: AWQ cannot store it
    bad[Q] = qw
    with pytest.raises(ValueError, match=rf"{Q}: AWQ checkpoints have no g_idx"):
        save_quantized(model, bad, folder, "awq")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_one_format_over_another_leaves_no_mixed_folder(quantized, folder):
    model, results = quantized
    save_quantized(model, results, folder, "compressed-tensors")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    keys = load_file(str(folder / "model.safetensors")).keys()
    assert not any(k.endswith(("qweight", "qzeros", "g_idx")) for k in keys)
    assert _config(folder)["quantization_config"]["quant_method"] == "compressed-tensors"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt"]


def test_saving_into_a_folder_with_other_files_is_refused(quantized, tmp_path):
    model, results = quantized
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds files that are not part of a checkpoint \(tokenizer.json\)"):
        save_quantized(model, results, tmp_path / "mine", "gptq")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["tokenizer.json"]


def test_a_float_models_folder_is_refused(quantized, tmp_path):
    model, results = quantized
    model.save_pretrained(tmp_path / "float")  # config.json + model.safetensors, no quantization_config
    (tmp_path / "float" / "generation_config.json").unlink(missing_ok=True)  # foreign: refused on that count too
    before = sorted(p.name for p in (tmp_path / "float").iterdir())
    with pytest.raises(ValueError, match=r"not a quantized checkpoint \(its config.json has no quantization_config\)"):
        save_quantized(model, results, tmp_path / "float", "gptq")
    assert sorted(p.name for p in (tmp_path / "float").iterdir()) == before


def test_an_earlier_checkpoint_with_its_tokenizer_is_replaced(quantized, tmp_path):
    model, results = quantized
    folder = save_quantized(model, results, tmp_path / "ckpt", "gptq")
    (folder / "tokenizer.json").write_text("{}")  # as save_quantized(tokenizer=...) leaves it
    save_quantized(model, results, folder, "awq")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert _config(folder)["quantization_config"]["quant_method"] == "awq"


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_biases_travel(tmp_path, fmt, make_tiny_llama):
    model = make_tiny_llama(attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for lin in decoder_linears(model).values():
            lin.bias.normal_()
    results = {n: rtn_grid_quantize(m.weight.detach(), 4, 32) for n, m in decoder_linears(model).items()}
    loaded = load_quantized(save_quantized(model, results, tmp_path / fmt, fmt))
    assert torch.equal(loaded.get_submodule(Q).bias, model.get_submodule(Q).bias)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, _fake(model, results, torch.float16)(IDS).logits)


def test_a_stored_bias_is_accepted_and_checked(quantized, folder):
    """AutoGPTQ writes a zero bias for every layer, also for models without biases: read it, check its shape."""
    model, results = quantized
    tensors = _tensors(folder)
    tensors[f"{Q}.bias"] = torch.zeros(64)
    _rewrite(folder, tensors)
    with torch.no_grad():
        assert torch.equal(load_quantized(folder)(IDS).logits, _fake(model, results, torch.float16)(IDS).logits)
    tensors[f"{Q}.bias"] = torch.zeros(63)
    _rewrite(folder, tensors)
    with pytest.raises(ValueError, match=rf"tensor '{Q}.bias' is float32 \(63,\), expected"):
        load_quantized(folder)
