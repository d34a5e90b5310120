"""qtutor's LLM.int8() against bitsandbytes' Linear8bitLt on the CPU, on real layer inputs."""
import bitsandbytes as bnb
import pytest
import torch

from qtutor.data import calibration_samples
from qtutor.methods.llm_int8 import outlier_columns, vectorwise_quant
from qtutor.nn import Int8LinearLt

LAYERS = ["model.layers.5.mlp.down_proj", "model.layers.2.self_attn.q_proj", "model.layers.29.mlp.up_proj"]


def _layer_input(model, tok, name):
    lin = model.get_submodule(name)
    seen = {}
    hook = lin.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    with torch.no_grad():
        model(calibration_samples(tok, n_samples=2, seq_len=64, seed=0))
    hook.remove()
    return lin, seen["x"].reshape(-1, lin.in_features).half()


@pytest.mark.parametrize("threshold", [6.0, 3.0, 0.0])
@pytest.mark.parametrize("name", LAYERS)
def test_equals_bitsandbytes(smollm2, name, threshold):
    model, tok = smollm2
    lin, x = _layer_input(model, tok, name)
    ref = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False,
                              threshold=threshold)
    ref.load_state_dict({"weight": lin.weight.detach().half()})
    ref = ref.to("cpu").eval()  # eval: in training mode bitsandbytes' CPU path dequantizes instead
    ours = Int8LinearLt.from_linear(lin, threshold=threshold)
    assert torch.equal(ours.CB, ref.weight.data) and torch.equal(ours.SCB, ref.weight.SCB)
    with torch.no_grad():
        y_ref, y = ref(x), ours(x)
    # tolerance 0: the same operations in the same order give the same fp16 bits
    assert torch.equal(y, y_ref)


def test_triton_path_within_one_fp16_step(smollm2):
    model, tok = smollm2
    lin, x = _layer_input(model, tok, LAYERS[0])
    with torch.no_grad():
        y = Int8LinearLt.from_linear(lin)(x)
        y_t = Int8LinearLt.from_linear(lin, use_triton=True)(x)
    # the kernel scales by (s_x/127)(s_w/127) instead of s_x s_w/127²: at most one fp16 rounding apart
    assert float((y - y_t).abs().max()) <= float(y.abs().max()) * 2**-10


def test_outliers_excluded_from_row_scale():
    x = torch.tensor([[1.0, 8.0, -0.5], [0.25, 7.0, 1.0]], dtype=torch.float16)
    codes, stats, cols = vectorwise_quant(x, threshold=6.0)
    assert cols.tolist() == [1] and stats.tolist() == [1.0, 1.0]
    assert codes[:, 1].tolist() == [0, 0]
    assert outlier_columns(x, 6.0).tolist() == [1]


def test_bad_dtype():
    with pytest.raises(ValueError, match="float16"):
        vectorwise_quant(torch.randn(2, 4))


def test_threshold_is_inclusive():
    # bitsandbytes routes |x| >= threshold to fp16: a value exactly at 6.0 is an outlier, 5.996 is not
    x = torch.tensor([[6.0, 1.0, 5.996], [0.5, -6.0, 0.25]], dtype=torch.float16)
    codes, stats, cols = vectorwise_quant(x, threshold=6.0)
    assert cols.tolist() == [0, 1] and outlier_columns(x, 6.0).tolist() == [0, 1]
    assert codes[:, :2].eq(0).all() and stats.tolist() == [5.99609375, 0.5]


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), "6"], ids=["negative", "nan", "string"])
def test_bad_threshold_cpu_path(threshold):
    x = torch.randn(3, 8).half()
    CB, SCB, _ = vectorwise_quant(torch.randn(4, 8).half())
    from qtutor.methods.llm_int8 import llm_int8_matmul

    with pytest.raises(ValueError, match="threshold="):
        llm_int8_matmul(x, CB, SCB, threshold)
    with pytest.raises(ValueError, match="threshold="):
        Int8LinearLt(CB, SCB, threshold)
