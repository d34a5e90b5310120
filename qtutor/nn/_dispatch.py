"""The one rule for when a quantized Linear runs a Triton kernel and when it runs PyTorch.

A layer runs its kernel when **all** of these hold:

1. the input is on a CUDA device (Triton's kernels are GPU code);
2. the input's dtype is one the kernel takes (``dtypes``; fp16/bf16 for the
   W4A16 and NF4 kernels);
3. the layer's format is one the kernel handles (``supported``, e.g. 4-bit codes
   for W4A16);
4. ``triton`` imports.

Otherwise the layer computes the same result in PyTorch (dequantize, or
quantize activations, and ``matmul``), on any device. ``force=False`` always
runs PyTorch; ``force=True`` drops conditions 1 and 4 (the kernel then runs in
Triton's interpreter on a CPU, with ``TRITON_INTERPRET=1``, as the tests do) but
never 2 and 3: a kernel is not handed an input it cannot take. FP8's fast path is not Triton but
``torch._scaled_mm``: :func:`use_scaled_mm` is its rule.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["KERNEL_DTYPES", "check_scaled_weight", "kernel_available", "use_kernel", "use_scaled_mm"]

KERNEL_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def kernel_available() -> bool:
    """True when ``triton`` (and so ``qtutor.kernels``) can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_kernel(x: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = KERNEL_DTYPES, supported: bool = True,
               force: bool | None = None) -> bool:
    """Whether a layer fed ``x`` runs its Triton kernel (see the module docstring); ``dtypes=None``: any dtype."""
    if force is False or not supported or (dtypes is not None and x.dtype not in dtypes):
        return False
    return force is True or (x.is_cuda and kernel_available())


def use_scaled_mm(x: torch.Tensor, *shapes: int) -> bool:
    """FP8's rule: CUDA with compute capability ≥ 8.9 (Ada, Hopper: fp8 tensor cores) and every size in
    ``shapes`` (K and N) a multiple of 16, as ``torch._scaled_mm`` requires."""
    if not x.is_cuda or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 9) and all(s % 16 == 0 for s in shapes)


def check_scaled_weight(q_weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                        dtype: torch.dtype, dtype_name: str) -> None:
    """The stored tensors of a per-output-channel scaled linear (W8A8 int8, FP8): codes ``q_weight``
    (out, in) of ``dtype``, float ``w_scale`` (out,), optional ``bias`` (out,)."""
    if q_weight.dtype != dtype or q_weight.ndim != 2:
        raise ValueError(f"q_weight must be 2-D {dtype_name} (out, in), got {q_weight.dtype} {tuple(q_weight.shape)}")
    if w_scale.shape != (q_weight.shape[0],) or not w_scale.is_floating_point():
        raise ValueError(f"w_scale must be float ({q_weight.shape[0]},), got {w_scale.dtype} {tuple(w_scale.shape)}")
    if bias is not None and tuple(bias.shape) != (q_weight.shape[0],):
        raise ValueError(f"bias must have shape ({q_weight.shape[0]},), got {tuple(bias.shape)}")
