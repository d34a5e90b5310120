"""Diagnose GPU vs reference differences of the W8A8 kernels (prints counts and magnitudes)."""
import torch

from qtutor.kernels.w8a8 import (int8_matmul, int8_matmul_ref, quantize_per_token, quantize_per_token_ref,
                                 w8a8_dynamic, w8a8_dynamic_ref)

torch.manual_seed(0)
for M, K, N in [(1, 64, 64), (5, 100, 70), (33, 576, 192)]:
    for dt in (torch.float16, torch.float32):
        x = (torch.randn(M, K) * 3).to(dt).cuda()
        q, s = quantize_per_token(x)
        qr, sr = quantize_per_token_ref(x)
        dq = (q.int() - qr.int()).abs()
        print(M, K, N, dt, "codes differ:", int((dq > 0).sum()), "max", int(dq.max()), "scales differ:", int((s != sr).sum()),
              "max rel", float(((s - sr).abs() / sr).max()))
        if (dq > 0).any():
            i = (dq > 0).nonzero()[0]
            v = x[i[0], i[1]].float() * (torch.full((1,), 127.0, device="cuda") / x[i[0]].float().abs().max())
            print("   value*inv", float(v), "kernel", int(q[i[0], i[1]]), "ref", int(qr[i[0], i[1]]))
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8).cuda()
        sw = (torch.rand(N).cuda() + 0.01) / 127
        y = int8_matmul(qr, w, sr, sw, out_dtype=torch.float32)
        yr = int8_matmul_ref(qr, w, sr, sw)
        print("   int8_matmul rel err", float((y - yr).abs().max() / yr.abs().max()))
        yd = w8a8_dynamic(x, w, sw).float()
        ydr = w8a8_dynamic_ref(x, w, sw).float()
        print("   dynamic rel err", float((yd - ydr).abs().max() / ydr.abs().max()))
