"""NF4/FP4 with double quantization: byte-identical to bitsandbytes on the CPU, on real SmolLM2 weights."""
import bitsandbytes.functional as F
import pytest
import torch

from qtutor.methods.nf4 import (
    NF4Config,
    QuantType4,
    dequantize_4bit,
    dynamic_map,
    fp4_levels,
    nf4_bits_per_weight,
    normal_float_levels,
    quantize_4bit,
)

LAYERS = ["model.layers.3.mlp.up_proj", "model.layers.0.self_attn.k_proj", "model.layers.29.mlp.down_proj"]


def test_nf4_levels_derived_equal_bitsandbytes_table():
    ours = normal_float_levels()
    assert torch.equal(ours, F.get_4bit_type("nf4", device="cpu"))
    assert ours[7] == 0 and ours[0] == -1 and ours[-1] == 1
    assert (ours > 0).sum() == 8 and (ours < 0).sum() == 7  # the asymmetric construction


def test_fp4_and_dynamic_maps_equal_bitsandbytes():
    assert torch.equal(fp4_levels(), F.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(dynamic_map(), F.create_dynamic_map())


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "double-quant"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", LAYERS)
def test_byte_identical_to_bitsandbytes(smollm2, name, dtype, quant_type, double_quant):
    model, _ = smollm2
    w = model.get_submodule(name).weight.detach().to(dtype)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    ours = quantize_4bit(w, NF4Config(QuantType4(quant_type), 64, double_quant))
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax, state.absmax)
    if double_quant:
        assert torch.equal(ours.absmax2, state.state2.absmax)
        assert torch.equal(ours.offset, state.offset)
    assert torch.equal(dequantize_4bit(ours), F.dequantize_4bit(packed, state))


@pytest.mark.parametrize("shape", [(5, 64), (3, 107), (1, 7)], ids=str)
def test_short_last_block_and_odd_count_match_bitsandbytes(shape):
    w = torch.randn(shape)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quantize_4bit(w, NF4Config(double_quant=False))
    assert torch.equal(ours.packed, packed) and torch.equal(ours.absmax, state.absmax)
    assert torch.equal(dequantize_4bit(ours), F.dequantize_4bit(packed, state))


def test_all_zero_block():
    w = torch.zeros(4, 64)
    w[1] = torch.randn(64)
    out = dequantize_4bit(quantize_4bit(w))
    assert torch.isfinite(out).all() and out[0].abs().max() == 0


def test_bits_per_weight():
    assert nf4_bits_per_weight(64 * 256 * 100, NF4Config(double_quant=False)) == pytest.approx(4.5)
    # QLoRA §3: double quantization costs 8/64 + 32/(64*256) = 0.127 bit per weight
    n = 64 * 256 * 1000
    assert nf4_bits_per_weight(n) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / n)


def test_bad_input():
    with pytest.raises(ValueError, match="blocksize=48"):
        NF4Config(blocksize=48)
    with pytest.raises(ValueError, match="quant_type"):
        NF4Config(quant_type="nf4")
    with pytest.raises(ValueError, match="NaN"):
        quantize_4bit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="dtype torch.int8"):
        quantize_4bit(torch.ones(64, dtype=torch.int8))


@pytest.mark.parametrize("double_quant", [True, False], ids=["double-quant", "fp32-absmax"])
def test_nf4_linear_matches_bitsandbytes_linear4bit(smollm2, double_quant):
    """NF4Linear on a real layer gives what bitsandbytes' Linear4bit gives (CPU: both dequantize and
    multiply); its Triton path (the GPU path, here in the interpreter) agrees within fp16 rounding."""
    import bitsandbytes as bnb

    from qtutor.nn import NF4Linear

    model, _ = smollm2
    lin = model.get_submodule("model.layers.4.mlp.up_proj")
    w = lin.weight.detach().half()
    ref = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float16,
                            compress_statistics=double_quant, quant_type="nf4")
    ref.load_state_dict({"weight": w})
    ref = ref.to("cpu").eval()  # quantizes on the move
    ours = NF4Linear(quantize_4bit(w, NF4Config(double_quant=double_quant)))
    assert torch.equal(ours.packed, ref.weight.data)
    x = torch.randn(3, lin.in_features, generator=torch.Generator().manual_seed(0)).half()
    with torch.no_grad():
        y_ref, y = ref(x), ours(x)
        y_kernel = NF4Linear(quantize_4bit(w, NF4Config(double_quant=double_quant)), use_kernel=True)(x)
    exact = x.float() @ dequantize_4bit(ours.state()).float().T  # the same bytes as bitsandbytes'

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max())

    assert rel(y, exact) < 1e-3  # one fp16 rounding of the output
    assert rel(y_ref, exact) < 8e-3  # bitsandbytes' CPU path multiplies in bfloat16
    assert rel(y_kernel, exact) < 2e-3
