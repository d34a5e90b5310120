import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtutor.primitives import pack, unpack


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32], ids=["uint8", "int32"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_round_trip(bits, dtype):
    n = 96  # a multiple of 8 and 32 codes for 3-bit words
    q = torch.randint(0, 2**bits, (5, n), dtype=torch.uint8)
    packed = pack(q, bits, dtype)
    assert packed.dtype == dtype and packed.shape == (5, n * bits // (8 if dtype is torch.uint8 else 32))
    assert torch.equal(unpack(packed, bits), q)


def test_gptq_int32_nibble_order():
    """Eight 4-bit codes per int32, the first in the lowest nibble (GPTQ's qweight)."""
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.uint8)
    assert pack(q, 4, torch.int32).item() == int("0xF7654321", 16) - 2**32


def test_byte_order_two_bit():
    q = torch.tensor([[3, 0, 1, 2]], dtype=torch.uint8)
    assert pack(q, 2).item() == 3 | (0 << 2) | (1 << 4) | (2 << 6)


def test_three_bit_spills_across_words():
    q = torch.zeros(1, 32, dtype=torch.uint8)
    q[0, 10] = 7  # bits 30..32: two bits in word 0, one in word 1
    w = pack(q, 3, torch.int32)
    assert (w[0, 0].item() & 0xFFFFFFFF) == (3 << 30) and w[0, 1].item() == 1


def test_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack(torch.zeros(1, 12, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match=r"codes span \[0, 16\]"):
        pack(torch.tensor([[0, 16]], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="integer codes"):
        pack(torch.zeros(1, 8), 4)
    with pytest.raises(ValueError, match="n_bits=9"):
        unpack(torch.zeros(1, 8, dtype=torch.uint8), 9)


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), words=st.integers(1, 6), data=st.data())
def test_property_pack_unpack_identity(bits, words, data):
    n = words * 32  # fills whole words for every width
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n))
    q = torch.tensor(codes, dtype=torch.uint8)
    for dtype in (torch.uint8, torch.int32):
        assert torch.equal(unpack(pack(q, bits, dtype), bits), q)
