"""On a GPU every converted module takes its fast path (Triton, or _scaled_mm for FP8) and agrees with the
PyTorch path that the same module runs on the CPU (GPU only)."""
import copy

import pytest
import torch

from qtutor.config import FP8Config, LLMInt8Config, NF4Config, RTNConfig, W8A8Config
from qtutor.nn import convert

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# relative max logit difference between the CUDA and the CPU run of one converted fp16 model
TOLERANCE = {RTNConfig: 1e-2, NF4Config: 1e-2, LLMInt8Config: 2e-2, W8A8Config: 2e-2, FP8Config: 2e-2}


@pytest.mark.parametrize("config", [RTNConfig(4, 32), NF4Config(), LLMInt8Config(), W8A8Config(), FP8Config()],
                         ids=lambda c: type(c).__name__)
def test_fast_path_matches_cpu_path(tiny_llama, tiny_ids, config):
    # convert the fp16 model: .half() after convert would also cast the modules' float buffers
    cpu = convert(copy.deepcopy(tiny_llama).half(), config)
    gpu = copy.deepcopy(cpu).cuda()
    with torch.no_grad():
        want = cpu(tiny_ids).logits.float()
        got = gpu(tiny_ids.cuda()).logits.float().cpu()
    assert torch.isfinite(got).all()
    assert float((got - want).abs().max() / want.abs().max()) < TOLERANCE[type(config)]


@pytest.mark.parametrize("config", [RTNConfig(4, 32), NF4Config(), LLMInt8Config(), W8A8Config(), FP8Config()],
                         ids=lambda c: type(c).__name__)
def test_convert_a_model_on_the_gpu(tiny_llama, tiny_ids, config):
    """Quantizing happens where the weights are (packing and NF4 on the CPU, then back): same layers as on the CPU."""
    on_cpu = convert(copy.deepcopy(tiny_llama).half(), config)
    on_gpu = convert(copy.deepcopy(tiny_llama).half().cuda(), config)
    for name, buf in on_cpu.named_buffers():
        other = on_gpu.get_buffer(name).cpu()
        assert other.dtype == buf.dtype and other.shape == buf.shape, name
        if buf.dtype in (torch.int8, torch.float8_e4m3fn):  # GPU and CPU may round a tie of x·(qmax/max) apart
            assert float((other.float() - buf.float()).abs().max()) <= float(buf.float().abs().max()) / 8, name
        elif buf.is_floating_point():
            torch.testing.assert_close(other, buf, rtol=1e-6, atol=0, msg=name)
        else:
            assert torch.equal(other, buf), name
    with torch.no_grad():
        assert torch.isfinite(on_gpu(tiny_ids.cuda()).logits).all()
