"""Per layer, on SmolLM2's real activations: the fused LLM.int8() kernel against the PyTorch decomposition (GPU)."""
import torch

from qtutor.kernels.llm_int8 import llm_int8_matmul, llm_int8_ref
from qtutor.methods.llm_int8 import vectorwise_quant
from qtutor.model import decoder_linears, load_model

model, tok = load_model()
model = model.half().cuda()
lins = decoder_linears(model)
seen = {}
hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, a[0].detach())) for n, m in lins.items()]
with torch.no_grad():
    model(tok("The capital of France is", return_tensors="pt").input_ids.cuda())
for h in hooks:
    h.remove()
worst = []
for n, lin in lins.items():
    x = seen[n].reshape(-1, seen[n].shape[-1]).contiguous()
    CB, SCB, _ = vectorwise_quant(lin.weight.detach())
    got, want = llm_int8_matmul(x, CB, SCB, 6.0), llm_int8_ref(x, CB, SCB, 6.0)
    err = float((got.float() - want.float()).abs().max() / want.float().abs().max())
    worst.append((err, n, tuple(x.shape), float(x.abs().max()), int((x.abs() >= 6).any(0).sum()),
                  bool(torch.isfinite(x).all()), bool(torch.isfinite(want).all()), bool(torch.isfinite(got).all())))
for w in sorted(worst, reverse=True)[:12]:
    print(w, flush=True)
