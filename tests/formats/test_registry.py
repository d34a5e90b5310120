"""The layout registry: every layout's pack, expected tensors, config round trip and conversion to W4A16Linear's."""
import pytest
import torch

from qtutor.formats.checkpoint import FORMATS
from qtutor.formats.layouts import pack_gptq
from qtutor.formats.registry import LAYOUTS, layout_for
from qtutor.primitives import rtn_grid_quantize


def _qw(n_bits=4, group_size=32, symmetric=False):
    torch.manual_seed(0)
    return rtn_grid_quantize(torch.randn(48, 96), n_bits, group_size, symmetric)


def test_formats_are_the_registry():
    assert FORMATS == ("gptq", "gptq_v2", "awq", "compressed-tensors")
    assert all(LAYOUTS[name].name == name for name in LAYOUTS)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_pack_matches_expected_and_converts_to_gptq_v2(name, symmetric):
    layout, qw = LAYOUTS[name], _qw(symmetric=symmetric)
    packed = layout.pack(qw, symmetric)
    spec = layout.expected(48, 96, 4, 32, symmetric)
    assert set(packed) == set(spec)
    for key, (dtypes, shape) in spec.items():
        assert packed[key].dtype in dtypes and tuple(packed[key].shape) == shape, key
    want = pack_gptq(qw, version=2)
    got = layout.to_w4a16(packed, 4, 32)
    for key in ("qweight", "qzeros", "g_idx"):
        assert torch.equal(got[key], want[key]), key
    assert torch.equal(got["scales"].float(), qw.scale.T.to(packed.get("scales", packed.get("weight_scale")).dtype).float())


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("group_size", [32, None], ids=["g32", "per-row"])
def test_quantization_config_round_trip(name, group_size):
    layout = LAYOUTS[name]
    qconfig = layout.quantization_config(4, group_size, False, True)
    got, n_bits, gs, _ = layout_for(qconfig)
    assert got is layout and (n_bits, gs) == (4, group_size)


@pytest.mark.parametrize("qconfig, match", [
    ({"quant_method": "exl2"}, r"quant_method='exl2'"),
    ({"quant_method": "gptq", "checkpoint_format": "marlin", "bits": 4, "group_size": 128},
     r"checkpoint_format='marlin'"),
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, r"bits=3 in quantization_config"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, r"group_size=0 in quantization_config"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, r"version='gemv'"),
    ({"quant_method": "compressed-tensors"}, r"no config_groups"),
    ([], r"quantization_config must be an object"),
], ids=["method", "gptq-format", "gptq-3-bit", "group-0", "awq-gemv", "ct-no-groups", "not-a-dict"])
def test_layout_for_rejects(qconfig, match):
    with pytest.raises(ValueError, match=match):
        layout_for(qconfig)
