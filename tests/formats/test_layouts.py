"""GPTQ, AWQ and compressed-tensors packings: round trips, the references' bit layouts, bad input."""
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

from qtutor.primitives import QuantizedWeight, rtn_grid_quantize
from qtutor.formats.layouts import (
    pack_awq, pack_compressed_tensors, pack_gptq, unpack_awq, unpack_compressed_tensors, unpack_gptq,
)


def _qw(n_bits=4, group_size=64, out=64, inp=192, seed=0):
    torch.manual_seed(seed)
    return rtn_grid_quantize(torch.randn(out, inp), n_bits, group_size)


def _same(a: QuantizedWeight, b: QuantizedWeight):
    assert torch.equal(a.q, b.q) and torch.equal(a.zero, b.zero) and torch.equal(a.g_idx, b.g_idx)


@pytest.mark.parametrize("n_bits", [2, 4, 8])
@pytest.mark.parametrize("version", [1, 2])
def test_gptq_round_trip(n_bits, version):
    qw = _qw(n_bits)
    _same(unpack_gptq(pack_gptq(qw, version), n_bits, 64, version), qw)


def test_gptq_layout_by_hand():
    """Word (i // 8, j) holds code q[j, i] at bits 4·(i % 8); v1 stores zero − 1."""
    qw = _qw(4, group_size=64, out=16, inp=64)
    packed = pack_gptq(qw, version=1)
    words = packed["qweight"].to(torch.int64) & 0xFFFFFFFF
    for i, j in [(0, 0), (5, 3), (63, 15), (17, 9)]:
        assert (words[i // 8, j] >> (4 * (i % 8))) & 0xF == qw.q[j, i]
    zwords = packed["qzeros"].to(torch.int64) & 0xFFFFFFFF
    for j in range(16):
        assert (zwords[0, j // 8] >> (4 * (j % 8))) & 0xF == (int(qw.zero[j, 0]) - 1) % 16
    assert packed["scales"].dtype == torch.float16 and packed["scales"].shape == (1, 16)


def test_awq_layout_matches_the_reference_loop():
    """AutoAWQ's ``WQLinear_GEMM.from_linear`` packing, written as its loop."""
    qw = _qw(4, group_size=64, out=32, inp=128)
    intweight = qw.q.T.to(torch.int32)  # (in, out)
    ref = torch.zeros(128, 4, dtype=torch.int32)
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    for col in range(4):
        for i in range(8):
            ref[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)
    packed = pack_awq(qw)
    assert torch.equal(packed["qweight"], ref)
    _same(unpack_awq(packed, 64), qw)


@pytest.mark.parametrize("n_bits", [2, 3, 4, 8])
def test_compressed_tensors_packing_equals_the_library(n_bits):
    qw = _qw(n_bits)
    mine = pack_compressed_tensors(qw)
    signed = lambda t: (t.to(torch.int16) - 2 ** (n_bits - 1)).to(torch.int8)  # noqa: E731
    assert torch.equal(mine["weight_packed"], pack_to_int32(signed(qw.q), n_bits))
    assert torch.equal(mine["weight_zero_point"], pack_to_int32(signed(qw.zero), n_bits, packed_dim=0))
    assert torch.equal(unpack_from_int32(mine["weight_packed"], n_bits, qw.q.shape), signed(qw.q))
    _same(unpack_compressed_tensors(mine, n_bits, 64), qw)


def test_compressed_tensors_decompresses_to_the_same_weights():
    """The library's own ``PackedQuantizationCompressor.decompress`` gives qtutor's dequantized weight bit for bit."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    for symmetric in (False, True):
        torch.manual_seed(1)
        qw = rtn_grid_quantize(torch.randn(48, 256), 4, 128, symmetric=symmetric)
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=128))
        state = PackedQuantizationCompressor.decompress(pack_compressed_tensors(qw, symmetric=symmetric), scheme)
        assert torch.equal(state["weight"], qw.dequantize())


def test_bad_input():
    with pytest.raises(ValueError, match="3-bit GPTQ"):
        pack_gptq(_qw(3))
    with pytest.raises(ValueError, match="4-bit only"):
        pack_awq(_qw(2))
    ragged = _qw(4, group_size=128, inp=192)  # groups of 128 and 64
    with pytest.raises(ValueError, match="does not divide in_features=192"):
        pack_compressed_tensors(ragged)
    act = _qw(4)
    act.g_idx = act.g_idx.flip(0).contiguous()
    with pytest.raises(ValueError, match="act-order"):
        pack_awq(act)
    with pytest.raises(ValueError, match="g_idx"):
        pack_compressed_tensors(act)
    with pytest.raises(ValueError, match="zero-point to be 8"):
        pack_compressed_tensors(_qw(4), symmetric=True)
    with pytest.raises(ValueError, match="g_idx has shape"):
        QuantizedWeight(act.q, act.scale, act.zero, act.g_idx[:5], 4, 64)
