"""On a GPU every converted module takes its fast path (Triton, or _scaled_mm for FP8) and agrees with the
PyTorch path that the same module runs on the CPU (GPU only)."""
import copy

import pytest
import torch

from qtutor.config import FP8Config, LLMInt8Config, NF4Config, RTNConfig, W8A8Config
from qtutor.nn import MODULES, convert

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
    """Quantizing where the weights are (W4A16's packing on the GPU, NF4 on the CPU and back) gives the layers
    converting on the CPU gives, up to a rounding tie the two devices break apart."""
    on_cpu = convert(copy.deepcopy(tiny_llama).half(), config)
    on_gpu = convert(copy.deepcopy(tiny_llama).half().cuda(), config)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    for name, layer in on_cpu.named_modules():
        if type(layer) in MODULES.values() and layer.in_features == 64:
            other = copy.deepcopy(on_gpu.get_submodule(name)).cpu()
            assert type(other) is type(layer) and {n: b.dtype for n, b in other.named_buffers()} == \
                {n: b.dtype for n, b in layer.named_buffers()}, name
            with torch.no_grad():
                want, got = layer(x).float(), other(x).float()
            assert float((got - want).abs().max()) <= 2e-2 * float(want.abs().max()), name
    with torch.no_grad():
        assert torch.isfinite(on_gpu(tiny_ids.cuda()).logits).all()
