"""QLoRA adapters on NF4Linear: a fresh adapter changes nothing, only adapters get gradients, merging, bad input."""
import pytest
import torch
from torch import nn

from qtutor.nn import NF4Linear
from qtutor.nn.lora import LoRALinear, add_lora_, lora_parameters, merge_lora


def _nf4(seed=0, out=32, inp=64):
    torch.manual_seed(seed)
    lin = nn.Linear(inp, out, bias=True)
    return NF4Linear.from_linear(lin)


def test_fresh_adapter_changes_nothing_and_only_adapters_get_gradients():
    base = _nf4()
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 64, requires_grad=True)
    assert torch.equal(layer(x), base(x))
    loss = layer(x).pow(2).sum()
    loss.backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.lora_A.dtype == torch.bfloat16
    assert all(not p.requires_grad for p in base.parameters())  # bias frozen; codes are buffers
    assert all(b.grad is None for b in base.buffers())
    assert float(layer.lora_A.grad.abs().sum()) == 0  # B = 0: A's gradient is zero on the first step, as in peft
    assert float(layer.lora_B.grad.abs().sum()) > 0


def test_training_lowers_the_loss_on_a_tiny_model(make_tiny_llama, tiny_ids):
    model = make_tiny_llama()
    for i, block in enumerate(model.model.layers):
        for name in ("self_attn.q_proj", "self_attn.v_proj"):
            lin = block.get_submodule(name)
            parent = block.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], NF4Linear.from_linear(lin))
    names = add_lora_(model, lambda n: n.endswith(("q_proj", "v_proj")), r=4, alpha=8, adapter_dtype=torch.float32)
    assert len(names) == 4
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model(tiny_ids, labels=tiny_ids).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1


def test_merge_matches_the_adapter_up_to_nf4_rounding():
    base = _nf4(1)
    layer = LoRALinear(base, r=4, alpha=8, adapter_dtype=torch.float32)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.02)
    x = torch.randn(5, 64)
    merged = merge_lora(layer)
    assert isinstance(merged, NF4Linear)
    y, ym = layer(x), merged(x)
    assert (ym - y).norm() / y.norm() < 0.15  # re-quantizing to NF4 costs one more rounding
    assert not torch.equal(ym, y)
    plain = LoRALinear(nn.Linear(64, 32), r=2, adapter_dtype=torch.float32)
    with torch.no_grad():
        plain.lora_B.normal_()
    assert torch.allclose(merge_lora(plain)(x), plain(x), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "r=0"), (dict(alpha=-1.0), "alpha=-1.0"), (dict(dropout=1.0), "dropout=1.0"),
    (dict(adapter_dtype=torch.int8), "adapter_dtype"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(_nf4(), **kwargs)


def test_bad_targets_leave_the_model_unchanged(tiny_llama):
    before = [p.requires_grad for p in tiny_llama.parameters()]
    with pytest.raises(ValueError, match="matched no"):
        add_lora_(tiny_llama, lambda n: n.endswith("nothing"))
    with pytest.raises(ValueError, match="r=0"):
        add_lora_(tiny_llama, lambda n: n.endswith("q_proj"), r=0)
    assert [p.requires_grad for p in tiny_llama.parameters()] == before
    assert not any(isinstance(m, LoRALinear) for m in tiny_llama.modules())
    with pytest.raises(ValueError, match="LoRALinear"):
        merge_lora(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="base must be"):
        LoRALinear(nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize("use_kernel", [False, True])
def test_the_frozen_base_passes_a_gradient_to_its_input(use_kernel, monkeypatch):
    """An adapter below an NF4 layer learns only if the NF4 layer gives its input a gradient: x̄ = ȳ · W (the
    dequantized weight), on the kernel path too (the Triton kernel has no backward; training dequantizes, as
    bitsandbytes' MatMul4Bit does)."""
    if use_kernel:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    base = _nf4(2)
    base.use_kernel = use_kernel
    w = base(torch.eye(64)).detach() - base.bias.detach()  # row j: W[:, j]
    x = torch.randn(3, 64, requires_grad=True)
    y = base(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ w.T, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(base(x), y.detach())  # the same forward with and without autograd


def test_an_adapter_below_an_nf4_layer_gets_its_gradient():
    first = LoRALinear(_nf4(3, out=64, inp=64), r=4, alpha=8, adapter_dtype=torch.float32)
    with torch.no_grad():
        first.lora_B.normal_(0, 0.1)
    second = _nf4(4, out=16, inp=64)
    x = torch.randn(4, 64)
    second(first(x)).pow(2).sum().backward()
    assert float(first.lora_A.grad.abs().sum()) > 0 and float(first.lora_B.grad.abs().sum()) > 0
