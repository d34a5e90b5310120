"""qtutor's LoRA against peft 0.21.2 (the reference QLoRA stack): same initial distribution, and with the same
initial adapters the same outputs, gradients and training, on a float base and on NF4 (qtutor's ``NF4Linear``
against bitsandbytes' ``Linear4bit``)."""
import copy
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from qtutor.nn import NF4Linear
from qtutor.nn.lora import LoRALinear, add_lora_, lora_parameters

# `make setup` installs peft 0.21.2 and accelerate 1.16.0 (no dependencies) into .venv/ref/peft, outside
# site-packages: transformers imports peft whenever it is installed. Only these tests put it on sys.path.
_PEFT_REF = Path(sys.prefix) / "ref" / "peft"
TARGETS = ("q_proj", "v_proj")


@pytest.fixture(scope="module")
def peft():
    if _PEFT_REF.is_dir() and str(_PEFT_REF) not in sys.path:
        sys.path.append(str(_PEFT_REF))
    if os.environ.get("CI") and not _PEFT_REF.is_dir():
        pytest.fail(f"peft reference missing at {_PEFT_REF}: run make setup")
    return pytest.importorskip("peft")


def _pair(peft, base, peer_base=None, seed=0):
    """(qtutor model on ``base``, peft model on ``peer_base`` or a copy of ``base``) with the same adapters: A from
    qtutor, B random (so the update is not 0)."""
    ours = copy.deepcopy(base)
    names = add_lora_(ours, lambda n: n.endswith(TARGETS), r=4, alpha=8, adapter_dtype=torch.float32, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names:
            ours.get_submodule(n).lora_B.copy_(torch.randn(ours.get_submodule(n).lora_B.shape, generator=g) * 0.05)
    theirs = peft.get_peft_model(copy.deepcopy(base) if peer_base is None else peer_base,
                                 peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(TARGETS),
                                                 bias="none"))
    for n in names:
        layer = theirs.base_model.model.get_submodule(n)
        layer.lora_A["default"].weight.data = ours.get_submodule(n).lora_A.detach().clone()
        layer.lora_B["default"].weight.data = ours.get_submodule(n).lora_B.detach().clone()
    return ours, theirs, names


def _train(model, params, ids, steps=3):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_initialization_follows_peft(peft, tiny_llama):
    ours = copy.deepcopy(tiny_llama)
    add_lora_(ours, lambda n: n.endswith(TARGETS), r=4, alpha=8)
    theirs = peft.get_peft_model(copy.deepcopy(tiny_llama), peft.LoraConfig(r=4, lora_alpha=8,
                                                                            target_modules=list(TARGETS)))
    bound = 1 / math.sqrt(64)  # kaiming_uniform_(a=√5) on an (r, in=64) weight
    for m in ours.modules():
        if isinstance(m, LoRALinear):
            assert m.scaling == 2.0 and not m.lora_B.any() and float(m.lora_A.detach().abs().max()) <= bound
    peft_a = [m.weight for n, m in theirs.named_modules() if n.endswith("lora_A.default")]
    peft_b = [m.weight for n, m in theirs.named_modules() if n.endswith("lora_B.default")]
    assert len(peft_a) == len(lora_parameters(ours)) // 2 == 4
    assert all(not b.any() for b in peft_b) and all(float(a.detach().abs().max()) <= bound for a in peft_a)
    assert max(float(a.detach().abs().max()) for a in peft_a) > 0.8 * bound  # the same range, filled


def test_same_outputs_gradients_and_training_as_peft_on_a_float_base(peft, tiny_llama, tiny_ids):
    ours, theirs, _ = _pair(peft, tiny_llama)
    torch.testing.assert_close(ours(tiny_ids).logits, theirs(tiny_ids).logits, rtol=1e-6, atol=1e-6)
    ours_params = lora_parameters(ours)
    theirs_params = [p for p in theirs.parameters() if p.requires_grad]
    assert len(ours_params) == len(theirs_params) == 8
    a, b = _train(ours, ours_params, tiny_ids), _train(theirs, theirs_params, tiny_ids)
    assert a[-1] < a[0]
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)


def test_same_training_as_peft_on_bitsandbytes_nf4(peft, make_tiny_llama, tiny_ids):
    """The QLoRA stack: qtutor's NF4Linear + LoRALinear against bitsandbytes' Linear4bit + peft's LoRA, both on the
    same float weights (bitsandbytes quantizes on the CPU here, where qtutor matches it bit for bit)."""
    import bitsandbytes as bnb

    base = make_tiny_llama(1)
    nf4_ours, nf4_bnb = copy.deepcopy(base), copy.deepcopy(base)
    for block_ours, block_bnb in zip(nf4_ours.model.layers, nf4_bnb.model.layers):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"):
            parent, child = name.split(".")
            lin = block_ours.get_submodule(name)
            setattr(block_ours.get_submodule(parent), child, NF4Linear.from_linear(lin))
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float32,
                                  compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, compress_statistics=True,
                                         quant_type="nf4").to("cpu")
            setattr(block_bnb.get_submodule(parent), child, q)
    for m in nf4_bnb.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            assert m.weight.data.dtype == torch.uint8  # quantized, not a float weight passing through
    with torch.no_grad():
        torch.testing.assert_close(nf4_ours(tiny_ids).logits, nf4_bnb(tiny_ids).logits, rtol=0, atol=0)
    ours, theirs, _ = _pair(peft, nf4_ours, nf4_bnb)
    a = _train(ours, lora_parameters(ours), tiny_ids)
    b = _train(theirs, [p for p in theirs.parameters() if p.requires_grad], tiny_ids)
    assert a[-1] < a[0]
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
