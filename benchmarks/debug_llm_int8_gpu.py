"""LLM.int8() kernel against the PyTorch decomposition with outlier columns spread over K (GPU debugging).

    python benchmarks/debug_llm_int8_gpu.py
"""
import torch

from qtutor.kernels import llm_int8 as k
from qtutor.methods.llm_int8 import vectorwise_quant

torch.manual_seed(0)
for M, K, N, cols in [(6, 576, 192, [3, 17]), (6, 576, 192, [200, 450]), (6, 1536, 576, [5, 700, 1500]),
                      (1, 576, 1536, [300]), (33, 576, 192, [130, 131, 500])]:
    x = torch.randn(M, K, device="cuda")
    x[:, cols] *= 12.0
    x = x.half()
    CB, SCB, _ = vectorwise_quant((torch.randn(N, K, device="cuda") * 0.05).half())
    want = k.llm_int8_ref(x, CB, SCB, 6.0)
    for skip in (True, False):
        k.SKIP_CLEAN_TILES = skip
        for launch in (None, {"target_programs": 1}):
            got = k.llm_int8_matmul(x, CB, SCB, 6.0, launch=launch)
            err = float((got.float() - want.float()).abs().max() / want.float().abs().max())
            print(f"M={M} K={K} N={N} outliers={cols} skip_clean_tiles={skip} split={'default' if launch is None else 1}:"
                  f" rel err {err:.2e}", flush=True)
