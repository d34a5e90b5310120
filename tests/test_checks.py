"""Each checker accepts the right answer and rejects typical wrong ones with a useful message."""
import pytest
import torch

from qtutor.checks import CheckFailed, check_group_fake_quant, check_memory_gb, check_quantize_asym
from qtutor.primitives import PerChannel, PerGroup, QuantSpec, fake_quant


def test_memory_right_and_wrong():
    check_memory_gb(lambda n, b: n * b / 8 / 1e9)
    with pytest.raises(CheckFailed, match="GiB"):
        check_memory_gb(lambda n, b: n * b / 8 / 2**30)
    with pytest.raises(CheckFailed, match="bits, not bytes"):
        check_memory_gb(lambda n, b: n * b / 1e9)


def _asym(x, n_bits, include_zero=True, steps=None, clamp=True):
    qmax = 2**n_bits - 1
    lo, hi = x.min().item(), x.max().item()
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (steps or qmax)
    zp = round(-lo / scale)
    q = torch.round(x / scale) + zp
    return (q.clamp(0, qmax) if clamp else q), scale, zp


def test_asym_right_and_wrong():
    check_quantize_asym(_asym)
    with pytest.raises(CheckFailed, match="include 0.0"):
        check_quantize_asym(lambda x, b: _asym(x, b, include_zero=False))
    with pytest.raises(CheckFailed, match="number of steps"):
        check_quantize_asym(lambda x, b: _asym(x, b, steps=2**b))
    with pytest.raises(CheckFailed, match="zero_point"):
        check_quantize_asym(lambda x, b: (_asym(x, b)[0], _asym(x, b)[1], _asym(x, b)[2] + 1))
    with pytest.raises(CheckFailed, match="fractions"):
        check_quantize_asym(lambda x, b: (_asym(x, b)[0] + 0.25, *_asym(x, b)[1:]))


def test_group_right_and_wrong():
    check_group_fake_quant(lambda w, b, g: fake_quant(w, QuantSpec(n_bits=b, granularity=PerGroup(g))))
    with pytest.raises(CheckFailed, match="per-channel"):
        check_group_fake_quant(lambda w, b, g: fake_quant(w, QuantSpec(n_bits=b, granularity=PerChannel(0))))
    with pytest.raises(CheckFailed, match="shape"):
        check_group_fake_quant(lambda w, b, g: w.flatten())
    with pytest.raises(CheckFailed, match="equals w"):
        check_group_fake_quant(lambda w, b, g: w)


def _clip_right(x, n_bits, ratios):
    from qtutor.primitives import mse

    return min(ratios, key=lambda r: mse(x, fake_quant(x, QuantSpec(n_bits=n_bits, clip_ratio=r))))


def test_clip_search_right_and_wrong():
    from qtutor.checks import check_clip_search
    from qtutor.primitives import mse

    check_clip_search(_clip_right)
    with pytest.raises(CheckFailed, match="LARGEST"):
        check_clip_search(lambda x, b, rs: max(rs, key=lambda r: mse(x, fake_quant(x, QuantSpec(n_bits=b, clip_ratio=r)))))
    with pytest.raises(CheckFailed, match="not one of the candidate"):
        check_clip_search(lambda x, b, rs: 0.123)
    with pytest.raises(CheckFailed, match="the best is"):
        check_clip_search(lambda x, b, rs: 1.0)


def test_outlier_dims_right_and_wrong():
    from qtutor.checks import check_outlier_dims

    check_outlier_dims(lambda x, t: (x.abs() >= t).reshape(-1, x.shape[-1]).any(0).nonzero().flatten())
    with pytest.raises(CheckFailed, match="not >"):
        check_outlier_dims(lambda x, t: (x.abs() > t).reshape(-1, x.shape[-1]).any(0).nonzero().flatten())
    with pytest.raises(CheckFailed, match=r"\|x\|"):
        check_outlier_dims(lambda x, t: (x >= t).reshape(-1, x.shape[-1]).any(0).nonzero().flatten())
    with pytest.raises(CheckFailed, match="reduce over"):
        check_outlier_dims(lambda x, t: (x.abs() >= t).any(-1).nonzero().flatten())


def test_smooth_scales_right_and_wrong():
    from qtutor.checks import check_smooth_scales

    check_smooth_scales(lambda a, w, al: (a.pow(al) / w.abs().amax(0).clamp(min=1e-5).pow(1 - al)).clamp(min=1e-5))
    with pytest.raises(CheckFailed, match="swapped"):
        check_smooth_scales(lambda a, w, al: (a.pow(1 - al) / w.abs().amax(0).pow(al)))
    with pytest.raises(CheckFailed, match="abs before max"):
        check_smooth_scales(lambda a, w, al: a.pow(al) / w.amax(0).clamp(min=1e-5).pow(1 - al))
    with pytest.raises(CheckFailed, match="shape"):
        check_smooth_scales(lambda a, w, al: a.pow(al)[:3])


def test_int8_decomposition_right_and_wrong():
    from qtutor.checks import check_int8_decomposition
    from qtutor.methods.llm_int8 import llm_int8_matmul, vectorwise_quant

    def right(x, w, t):
        CB, SCB, _ = vectorwise_quant(w)
        return llm_int8_matmul(x, CB, SCB, t)

    check_int8_decomposition(right)
    with pytest.raises(CheckFailed, match="ignores the outlier"):
        check_int8_decomposition(lambda x, w, t: right(x, w, 0.0))
    with pytest.raises(CheckFailed, match="fp16 product"):
        check_int8_decomposition(lambda x, w, t: x.float() @ w.float().T)


def test_nf4_block_right_and_wrong():
    from qtutor.checks import check_nf4_block

    def right(x, levels):
        return torch.bucketize(x / x.abs().max(), (levels[:-1] + levels[1:]) / 2)

    check_nf4_block(right)
    with pytest.raises(CheckFailed, match="absmax"):
        check_nf4_block(lambda x, levels: torch.bucketize(x / x.max(), (levels[:-1] + levels[1:]) / 2))
    with pytest.raises(CheckFailed, match="indices"):
        check_nf4_block(lambda x, levels: levels[right(x, levels)] * 100)
    with pytest.raises(CheckFailed, match="codes differ"):
        check_nf4_block(lambda x, levels: torch.bucketize(x / x.abs().max(), torch.linspace(-1, 1, 17)[1:-1]))


def test_q8_0_encoder_right_and_wrong():
    import numpy as np

    from qtutor.checks import check_q8_0_encoder
    from qtutor.gguf import quantize_blocks

    def ours(x, rounding=lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5)):
        d = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
        q = rounding(x * inv).astype(np.int8)
        return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)

    check_q8_0_encoder(lambda x: quantize_blocks(x, "Q8_0"))
    check_q8_0_encoder(ours)
    with pytest.raises(CheckFailed, match="roundf"):
        check_q8_0_encoder(lambda x: ours(x, np.round))
    with pytest.raises(CheckFailed, match="d must come first"):
        check_q8_0_encoder(lambda x: np.roll(ours(x), -2, axis=1))
    with pytest.raises(CheckFailed, match="uint8"):
        check_q8_0_encoder(lambda x: ours(x)[:, :33])


def test_k4_scale_packing_right_and_wrong():
    import numpy as np

    from qtutor.checks import check_k4_scale_packing
    from qtutor.gguf import pack_scales_k4

    check_k4_scale_packing(pack_scales_k4)
    with pytest.raises(CheckFailed, match="swapped"):
        check_k4_scale_packing(lambda ls, lm: pack_scales_k4(lm, ls))

    def no_high_bits(ls, lm):
        q = pack_scales_k4(ls, lm)
        q[:, 0:8] &= 63
        return q

    with pytest.raises(CheckFailed, match="sub-blocks 4-7"):
        check_k4_scale_packing(no_high_bits)
    with pytest.raises(CheckFailed, match="12 bytes"):
        check_k4_scale_packing(lambda ls, lm: np.concatenate([ls, lm], axis=1))


def _gptq_step(W1, Hinv1, i, scale, zero, maxq, propagate=True, divide=True):
    w = W1[:, i]
    q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)
    err = (w - q) / (Hinv1[i, i] if divide else 1.0)
    if propagate:
        W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
    return q, err


def test_gptq_column_step_right_and_wrong():
    from qtutor.checks import check_gptq_column_step

    check_gptq_column_step(_gptq_step)
    with pytest.raises(CheckFailed, match="round-to-nearest"):
        check_gptq_column_step(lambda *a: _gptq_step(*a, propagate=False))
    with pytest.raises(CheckFailed, match="Hinv1\\[i, i\\]"):
        check_gptq_column_step(lambda *a: _gptq_step(*a, divide=False))
    with pytest.raises(CheckFailed, match="not on the grid"):
        check_gptq_column_step(lambda *a: (_gptq_step(*a)[0] + 0.01, _gptq_step(*a)[1]))


def _awq_search(linear, x, n_bits, group_size, n_grid, normalise=True, restore=True):
    from qtutor.methods.awq import pseudo_quantize_tensor

    org, x_mean, w0 = linear(x), x.abs().mean(0), linear.weight.detach().clone()
    best = (float("inf"), None, None)
    for i in range(n_grid):
        s = x_mean.pow(i / n_grid).clamp(min=1e-4)
        if normalise:
            s = s / (s.max() * s.min()).sqrt()
        linear.weight.copy_(pseudo_quantize_tensor(w0 * s, n_bits, group_size) / s)
        loss = (org - linear(x)).pow(2).mean().item()
        if restore:
            linear.weight.copy_(w0)
        if loss < best[0]:
            best = (loss, i / n_grid, s)
    return best[1], best[2]


@torch.no_grad()
def test_awq_scale_search_right_and_wrong():
    from qtutor.checks import check_awq_scale_search

    check_awq_scale_search(_awq_search)
    with pytest.raises(CheckFailed, match="restore"):
        check_awq_scale_search(lambda *a: _awq_search(*a, restore=False))
    with pytest.raises(CheckFailed, match="best ratio 0.0"):
        check_awq_scale_search(lambda lin, x, *a: (0.0, torch.ones(x.shape[1])))


def _gemv(x, qweight, qzeros, scales, group_size, flip=False, zero=True, scale=True):
    K, N = x.shape[0], qweight.shape[1]
    shifts = torch.arange(0, 32, 4)
    if flip:
        shifts = shifts.flip(0)
    q = ((qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF).reshape(K, N).float()
    z = ((qzeros.unsqueeze(2) >> torch.arange(0, 32, 4).view(1, 1, 8)) & 0xF).reshape(qzeros.shape[0], N).float()
    g = torch.arange(K) // group_size
    w = q - z[g] if zero else q
    w = w * scales[g] if scale else w
    return x @ w


def test_dequant_gemv_right_and_wrong():
    from qtutor.checks import check_dequant_gemv

    check_dequant_gemv(_gemv)
    with pytest.raises(CheckFailed, match="wrong nibbles"):
        check_dequant_gemv(lambda *a: _gemv(*a, flip=True))
    with pytest.raises(CheckFailed, match="zero-point"):
        check_dequant_gemv(lambda *a: _gemv(*a, zero=False))
    with pytest.raises(CheckFailed, match="scale is missing"):
        check_dequant_gemv(lambda *a: _gemv(*a, scale=False))
