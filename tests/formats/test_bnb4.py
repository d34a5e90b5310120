"""NF4 checkpoints in bitsandbytes' serialization (qtutor.formats.bnb4): byte for byte what transformers +
bitsandbytes 0.50.2 save for the same float model, loaded by transformers with bitsandbytes exactly as their own
save loads, and read back by qtutor with bit-equal logits; bad folders and models are refused by name."""
import copy
import json

import pytest
import torch
from safetensors import safe_open

from qtutor.config import NF4Config
from qtutor.formats.bnb4 import load_nf4, save_nf4
from qtutor.formats.checkpoint import load_quantized
from qtutor.nn import NF4Linear, convert

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory, make_tiny_llama):
    folder = tmp_path_factory.mktemp("bnb") / "float"
    make_tiny_llama(seed=3, hidden_size=128, intermediate_size=256).save_pretrained(folder)
    return folder


def _bnb(folder, **kw):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32, **kw)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=cfg, device_map="cpu",
                                                dtype=torch.float32).eval()


def _float(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("double", [True, False], ids=["double-quant", "plain"])
def test_same_bytes_as_bitsandbytes_and_loads_like_it(float_folder, tmp_path, double):
    from transformers import AutoModelForCausalLM

    theirs = tmp_path / "theirs"
    _bnb(float_folder, bnb_4bit_use_double_quant=double).save_pretrained(theirs)
    model = _float(float_folder)
    ours = save_nf4(convert(model, NF4Config(double_quant=double)), tmp_path / "ours")
    with safe_open(ours / "model.safetensors", "pt") as a, safe_open(theirs / "model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    qc = json.loads((ours / "config.json").read_text())["quantization_config"]
    assert qc == json.loads((theirs / "config.json").read_text())["quantization_config"]
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_ours = AutoModelForCausalLM.from_pretrained(ours, device_map="cpu", dtype=torch.float32)(ids).logits
        t_theirs = AutoModelForCausalLM.from_pretrained(theirs, device_map="cpu", dtype=torch.float32)(ids).logits
        back = load_quantized(ours)
        assert all(isinstance(back.get_submodule(n), NF4Linear) for n in ("model.layers.0.mlp.down_proj",))
        assert torch.equal(t_ours, t_theirs)  # transformers reads our folder as it reads its own
        assert torch.equal(back(ids).logits, model(ids).logits)  # and qtutor reads it back bit for bit
        assert torch.equal(load_nf4(theirs)(ids).logits, model(ids).logits)  # theirs too
        # bitsandbytes' CPU matmul after loading is not float32-exact (about 3e-3 relative on a layer here)
        assert float((t_ours - model(ids).logits).abs().max()) < 0.05 * float(t_ours.abs().max())


def test_refusals(float_folder, tmp_path):
    model = _float(float_folder)
    with pytest.raises(ValueError, match="all NF4Linear .*model.layers.0.self_attn.q_proj is a Linear"):
        save_nf4(model, tmp_path / "x")
    q = convert(copy.deepcopy(model), NF4Config())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        save_nf4(q, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    out = save_nf4(q, tmp_path / "ok")
    from safetensors.torch import load_file, save_file

    tensors = load_file(out / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight.absmax"] = tensors["model.layers.1.mlp.up_proj.weight.absmax"][:-1]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight.absmax' is uint8 \(\d+,\), expected"):
        load_quantized(out)
