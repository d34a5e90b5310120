"""The one table of tolerances for the kernel tests: max |kernel − reference| relative to the reference's max |value|.

Each kernel is compared with its own PyTorch reference (``<op>_ref`` in the same file
under ``kernels/``); the tolerance is set by what may legitimately differ — the order
of float32 sums, and the one final rounding to the output dtype. One row per kind of
code (bit width), one column per output dtype.
"""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

RTOL = {
    # 4-bit weights (W4A16 in the GPTQ layout, NF4): fp16/bf16 activations, fp32 sums, one final cast;
    # fp32 activations (NF4 only, as bitsandbytes' float32 compute dtype): only the order of fp32 sums differs
    "4bit": {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5},
    # int8 codes (W8A8): exact integer sums, then the scale epilogue and one cast
    "int8": {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3},
    # fp8 e4m3 codes: fp32 sums of exact products; an H100's fp8 tensor cores add with fewer mantissa bits
    # than fp32 (Triton's default there, like torch._scaled_mm's use_fast_accum=True): a few 1e-4
    "fp8": {torch.float32: 1e-5 if DEVICE == "cpu" else 1e-3, torch.float16: 1e-3, torch.bfloat16: 8e-3},
    # LLM.int8(): bitsandbytes' decomposition, fp16 out (the split-K path skips one fp16 rounding)
    "llm_int8": {torch.float16: 1e-3},
}
# two launch paths of one kernel (GEMV vs GEMM, split-K epilogues): only the order of fp32 sums differs
RTOL_PATHS = 2e-3
# a whole-row int8 part that is empty (every entry an outlier) leaves only fp16 products: one more rounding
RTOL_LLM_INT8_ALL_OUTLIERS = 2e-3
# fp8 dynamic quantization against the float product: the quantization error itself, not a kernel error
RTOL_FP8_VS_FLOAT = 0.1


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want|, in float32."""
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())
