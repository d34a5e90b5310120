"""A qtutor-quantized model runs on the W4A16 kernel end to end (GPU only)."""
import copy

import pytest
import torch

from qtutor.nn import W4A16Linear
from qtutor.primitives import rtn_grid_quantize
from qtutor.model import decoder_linears

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_model_on_w4a16_kernel_matches_dequantized_reference(smollm2):
    model, tok = smollm2
    packed = copy.deepcopy(model).half().cuda()
    reference = copy.deepcopy(model).half().cuda()
    for name, lin in decoder_linears(model).items():
        qw = rtn_grid_quantize(lin.weight.detach(), 4, 64)
        parent, _, child = name.rpartition(".")
        setattr(packed.get_submodule(parent), child, W4A16Linear.from_quantized(qw).cuda())
        reference.get_submodule(name).weight.data = W4A16Linear.from_quantized(qw).dequantized_weight(torch.float16).cuda()
    ids = tok("The capital of France is", return_tensors="pt").input_ids.cuda()
    with torch.no_grad():
        got, want = packed(ids).logits.float(), reference(ids).logits.float()
    assert (got - want).abs().max() / want.abs().max() < 1e-2
    assert torch.equal(got[0, -1].argmax(), want[0, -1].argmax())
