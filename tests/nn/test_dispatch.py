"""The one rule for kernel vs PyTorch, and every quantized Linear's forward being one line that follows it."""
import inspect
import textwrap

import pytest
import torch

from qtutor import nn as qnn
from qtutor.nn._dispatch import KERNEL_DTYPES, use_kernel, use_scaled_mm

MODULES = [qnn.W4A16Linear, qnn.NF4Linear, qnn.Int8LinearLt, qnn.W8A8Linear, qnn.FP8Linear]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_forward_is_one_line(module):
    src = textwrap.dedent(inspect.getsource(module.forward)).strip().splitlines()
    assert src[0].startswith("def forward") and len(src) == 2, src
    assert src[1].strip().startswith("return ")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_module_has_both_constructors(module):
    assert callable(getattr(module, "from_linear")) and callable(getattr(module, "from_tensors"))


def test_cpu_input_runs_pytorch():
    x = torch.zeros(2, 8, dtype=torch.float16)
    assert not use_kernel(x)
    assert not use_scaled_mm(x, 16, 16)


def test_force_true_runs_the_kernel_only_on_inputs_it_takes():
    assert use_kernel(torch.zeros(2, 8, dtype=torch.float16), force=True)
    assert not use_kernel(torch.zeros(2, 8, dtype=torch.float32), force=True)  # no fp32 W4A16/NF4 kernel
    assert not use_kernel(torch.zeros(2, 8, dtype=torch.float16), supported=False, force=True)
    assert use_kernel(torch.zeros(2, 8, dtype=torch.float32), dtypes=None, force=True)


def test_force_false_never_runs_the_kernel():
    assert not use_kernel(torch.zeros(2, 8, dtype=torch.float16), force=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_rule(dtype):
    x = torch.zeros(2, 8, dtype=dtype, device="cuda")
    assert use_kernel(x) == (dtype in KERNEL_DTYPES)
    assert use_kernel(x, supported=False) is False
