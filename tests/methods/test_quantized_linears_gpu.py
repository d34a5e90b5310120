"""A qtutor-quantized model runs on the NF4 and LLM.int8() kernels end to end (GPU only)."""
import copy

import pytest
import torch

from qtutor.methods.llm_int8 import Int8LinearLt
from qtutor.methods.nf4 import NF4Linear, dequantize_4bit, quantize_4bit
from qtutor.model import decoder_linears

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _logits(model, tok):
    ids = tok("The capital of France is", return_tensors="pt").input_ids.cuda()
    with torch.no_grad():
        return model(ids).logits.float()


def _swap(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def test_model_on_nf4_kernel_matches_dequantized_reference(smollm2):
    model, tok = smollm2
    kernel, reference = copy.deepcopy(model).half().cuda(), copy.deepcopy(model).half().cuda()
    for name, lin in decoder_linears(model).items():
        state = quantize_4bit(lin.weight.detach().half())
        _swap(kernel, name, NF4Linear(state).cuda())
        reference.get_submodule(name).weight.data = dequantize_4bit(state).cuda()
    got, want = _logits(kernel, tok), _logits(reference, tok)
    assert (got - want).abs().max() / want.abs().max() < 1e-2
    assert torch.equal(got[0, -1].argmax(), want[0, -1].argmax())


def test_model_on_llm_int8_kernels_matches_the_decomposition(smollm2):
    """The fused kernels against bitsandbytes' steps in PyTorch (the path CI checks bit for bit)."""
    model, tok = smollm2
    kernel, reference = copy.deepcopy(model).half().cuda(), copy.deepcopy(model).half().cuda()
    for name, lin in decoder_linears(model).items():
        _swap(kernel, name, Int8LinearLt.from_linear(lin).cuda())
        _swap(reference, name, Int8LinearLt.from_linear(lin, use_triton=False).cuda())
    got, want = _logits(kernel, tok), _logits(reference, tok)
    assert (got - want).abs().max() / want.abs().max() < 1e-2
    assert torch.equal(got[0, -1].argmax(), want[0, -1].argmax())
