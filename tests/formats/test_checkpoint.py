"""Checkpoints of the real model: transformers + compressed-tensors read qtutor's, qtutor reads all of its own."""
import copy

import pytest
import torch

from qtutor.formats.checkpoint import load_quantized, save_quantized
from qtutor.nn import W4A16Linear
from qtutor.primitives import rtn_grid_quantize
from qtutor.model import decoder_linears

IDS = torch.tensor([[1, 504, 3458, 314, 4649, 314, 2]])


@pytest.fixture(scope="module")
def quantized(smollm2):
    model, _ = smollm2
    sym = {n: rtn_grid_quantize(m.weight.detach(), 4, 64, symmetric=True) for n, m in decoder_linears(model).items()}
    asym = {n: rtn_grid_quantize(m.weight.detach(), 4, 64) for n, m in decoder_linears(model).items()}
    return model, sym, asym


def _fake(model, results, scale_dtype=torch.float32):
    m = copy.deepcopy(model)
    for n, lin in decoder_linears(m).items():
        qw = copy.copy(results[n])
        qw.scale = qw.scale.to(scale_dtype).float()
        lin.weight.data = qw.dequantize()
    return m


def test_transformers_loads_compressed_tensors_bit_for_bit(quantized, tmp_path):
    from transformers import AutoModelForCausalLM

    model, sym, _ = quantized
    save_quantized(model, sym, tmp_path, "compressed-tensors")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        got = loaded(IDS).logits  # compressed-tensors decompresses on the first forward
        want = _fake(model, sym)(IDS).logits
    for name, qw in sym.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize()), name
    assert torch.equal(got, want)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2", "awq", "compressed-tensors"])
def test_qtutor_loads_its_checkpoints(quantized, tmp_path, fmt):
    model, _, asym = quantized
    save_quantized(model, asym, tmp_path, fmt)
    loaded = load_quantized(tmp_path)
    assert isinstance(loaded.model.layers[5].mlp.down_proj, W4A16Linear)
    # GPTQ and AWQ store fp16 scales; compressed-tensors keeps them in float32
    want = _fake(model, asym, torch.float32 if fmt == "compressed-tensors" else torch.float16)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, want(IDS).logits)


def test_checkpoint_errors(quantized, tmp_path):
    model, _, asym = quantized
    with pytest.raises(ValueError, match="fmt='exl2'"):
        save_quantized(model, asym, tmp_path, "exl2")
    partial = dict(list(asym.items())[:-1])
    with pytest.raises(ValueError, match="no quantized weight for 1 decoder linears"):
        save_quantized(model, partial, tmp_path, "gptq")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_quantized(tmp_path / "nowhere")
    save_quantized(model, asym, tmp_path, "gptq")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(Exception, match="(?i)safetensors|header|incomplete|invalid"):
        load_quantized(tmp_path)


def test_a_scheme_per_layer_in_compressed_tensors(quantized, tmp_path):
    """A measured mixed allocation (notebook 12's recorded KL map; 2-, 4- and 8-bit layers, groups of 32, 64 or a
    row: compressed-tensors needs the group size to divide 576) as one compressed-tensors checkpoint: a config group
    per scheme naming its layers; transformers decompresses every layer to the same weights, and qtutor reads each
    layer back in its own scheme."""
    import json

    import pandas as pd
    from transformers import AutoModelForCausalLM

    from qtutor.diagnose.allocate import Scheme, allocate, damage_from_frame, linear_shapes
    from qtutor.exercises import MIXED_PRECISION_MAP

    model, _, _ = quantized
    damage = damage_from_frame(pd.DataFrame(json.loads(MIXED_PRECISION_MAP.read_text())["rows"]), "kl")
    allowed = [Scheme(b, g) for b in (2, 4, 8) for g in (32, 64, None)]
    schemes = allocate(damage, linear_shapes(model), 4.4, allowed).schemes
    mixed = {n: rtn_grid_quantize(m.weight.detach(), schemes[n].n_bits, schemes[n].group_size, symmetric=True)
             for n, m in decoder_linears(model).items()}
    kinds = {(qw.n_bits, qw.group_size) for qw in mixed.values()}
    assert len(kinds) >= 4 and {qw.n_bits for qw in mixed.values()} == {2, 4, 8}
    with pytest.raises(ValueError, match="compressed-tensors' stores one scheme per layer"):
        save_quantized(model, mixed, tmp_path / "gptq", "gptq")
    save_quantized(model, mixed, tmp_path / "ct", "compressed-tensors")
    groups = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert len(groups) == len(kinds) and sum(len(g["targets"]) for g in groups.values()) == len(mixed)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    ours = load_quantized(tmp_path / "ct")
    with torch.no_grad():
        got, mine, want = loaded(IDS).logits, ours(IDS).logits, _fake(model, mixed)(IDS).logits
    for name, qw in mixed.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize()), name
        assert (ours.get_submodule(name).n_bits, ours.get_submodule(name).group_size) == (qw.n_bits, qw.group_size)
    assert torch.equal(got, want) and torch.equal(mine, want)
