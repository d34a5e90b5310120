"""Flash-decoding attention over a KIVI-style quantized KV cache: one query token per sequence.

For one sequence ``b`` and query head ``h`` (KV head ``j = h // (Hq / Hkv)``, grouped-query attention):

    K[t, d] = k_codes[t, d] · k_scale[t // group_k, d] + k_mn[t // group_k, d]      (per channel, groups of tokens)
    V[t, d] = v_codes[t, d] · v_scale[t, d // group_v] + v_mn[t, d // group_v]      (per token, groups of channels)
    keys    = [K[0 : k_len[b]] ; k_res[0 : r_len[b]]]          values likewise with V and v_res
    out[h]  = softmax(sm_scale · q[h] · keysᵀ) · values         sm_scale = 1/√D by default

The grouping — keys quantized per channel (their outlier channels stay within one
channel's scale), values per token, and the most recent tokens kept unquantized in a
residual window — is KIVI's (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache", arXiv:2402.02750).

Layout (B batch, Hq query heads, Hkv KV heads, T quantized capacity, R residual capacity, D head dim):
``q`` (B, Hq, D) fp16/bf16/fp32; ``k_codes``, ``v_codes`` uint8 (B, Hkv, T, D·bits/8), for 4 bits
byte j of a row holds channel 2j in its low nibble and 2j+1 in its high nibble; ``k_scale``,
``k_mn`` (B, Hkv, T/group_k, D); ``v_scale``, ``v_mn`` (B, Hkv, T, D/group_v), fp16 or fp32;
``k_res``, ``v_res`` (B, Hkv, R, D) in q's dtype; ``k_len``, ``r_len`` int32 (B,).

Flash-decoding (Dao, Haziza, Massa, Sizov 2023, "Flash-Decoding for long-context
inference"): a single query token leaves only B·Hkv independent (sequence, KV head)
pairs, far too few to fill a GPU, so the tokens are split over programs too. Each
program attends to its slice of tokens and writes an un-normalised partial output with
its running max and sum of exponentials; a second small kernel combines the splits with
the log-sum-exp trick. A split is either all-quantized or all-residual, so the
dequantization is a compile-time path, not a per-token branch.

Decode is memory-bound: the step reads the whole cache once and does ~4·D flops per
token and query head. Bytes moved per token per KV head ≈ 2·D·bits/8 for the codes
plus 2·D/group_k (keys' scale and min, shared by group_k tokens) and 2·D/group_v
(values') fp16 entries of 2 bytes; at 4 bits, D = 128 and groups of 32 that is
128 + 16 + 16 = 160 bytes against fp16's 512.
File order: PyTorch reference, Triton kernels, launcher.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check, interpreting

__all__ = ["quantize_kv_ref", "dequantize_k_ref", "dequantize_v_ref", "kv_decode_ref", "kv_decode_attention"]

_Q_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SCALE_DTYPES = (torch.float16, torch.float32)


# ---------------------------------------------------------------- reference

def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int codes (..., D) -> uint8 (..., D·bits/8); 4 bits: channel 2j in the low nibble of byte j."""
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (..., D·bits/8) -> int32 codes (..., D)."""
    p = packed.to(torch.int32)
    if bits == 8:
        return p
    return torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)  # (..., D/2, 2) -> (..., D)


def _minmax_qparams(x: torch.Tensor, dim: int, bits: int, scale_dtype: torch.dtype):
    """Asymmetric min/max ``(scale, mn)`` over ``dim`` in ``scale_dtype``; a zero range gets scale 1."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    rng = hi - lo
    scale = torch.where(rng > 0, rng / (2 ** bits - 1), torch.ones_like(rng))
    # a range too small for scale_dtype must not round to a zero scale
    scale = scale.to(scale_dtype).clamp_min(torch.finfo(scale_dtype).tiny)
    return scale, lo.to(scale_dtype)


def quantize_kv_ref(k: torch.Tensor, v: torch.Tensor, *, bits: int, group_k: int, group_v: int,
                    scale_dtype: torch.dtype = torch.float16):
    """Quantize float K, V (B, Hkv, T, D) into the kernel's layout (KIVI grouping, asymmetric min/max).

    Returns ``(k_codes, k_scale, k_mn, v_codes, v_scale, v_mn)``: codes uint8 (B, Hkv, T, D·bits/8),
    ``k_scale``/``k_mn`` (B, Hkv, T/group_k, D), ``v_scale``/``v_mn`` (B, Hkv, T, D/group_v) in
    ``scale_dtype``. Codes are rounded against the stored (rounded) scale and min, so
    |x − dequantized| ≤ scale/2 up to the rounding of the min to ``scale_dtype``.
    """
    check(bits in (8, 4), f"bits={bits}: allowed 8 or 4")
    check(k.ndim == 4 and k.shape == v.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B, Hkv, T, D)")
    B, H, T, D = k.shape
    check(group_k > 0 and T % group_k == 0, f"group_k={group_k}: must be a positive divisor of T={T}")
    check(group_v > 0 and D % group_v == 0, f"group_v={group_v}: must be a positive divisor of D={D}")
    check(bits == 8 or D % 2 == 0, f"D={D}: must be even for 4-bit codes (two per byte)")
    qmax = 2 ** bits - 1
    kg = k.float().reshape(B, H, T // group_k, group_k, D)  # (B, H, T/gk, gk, D): per channel, groups of tokens
    k_scale, k_mn = _minmax_qparams(kg, 3, bits, scale_dtype)
    kq = torch.clamp(torch.round((kg - k_mn.float()) / k_scale.float()), 0, qmax).reshape(B, H, T, D)
    vg = v.float().reshape(B, H, T, D // group_v, group_v)  # (B, H, T, D/gv, gv): per token, groups of channels
    v_scale, v_mn = _minmax_qparams(vg, 4, bits, scale_dtype)
    vq = torch.clamp(torch.round((vg - v_mn.float()) / v_scale.float()), 0, qmax).reshape(B, H, T, D)
    return (_pack(kq, bits), k_scale.squeeze(3).contiguous(), k_mn.squeeze(3).contiguous(),
            _pack(vq, bits), v_scale.squeeze(4).contiguous(), v_mn.squeeze(4).contiguous())


def _dequantize_ref(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, bits: int, group: int,
                    dim: int) -> torch.Tensor:
    """codes · scale + mn in float32, each (scale, mn) entry repeated over ``group`` positions along ``dim``."""
    q = _unpack(codes, bits).float()
    return q * scale.float().repeat_interleave(group, dim=dim) + mn.float().repeat_interleave(group, dim=dim)


def dequantize_k_ref(k_codes: torch.Tensor, k_scale: torch.Tensor, k_mn: torch.Tensor, *, bits: int,
                     group_k: int) -> torch.Tensor:
    """Keys (B, Hkv, T, D) float32 from per-channel codes: codes · scale[t // group_k] + mn[t // group_k]."""
    return _dequantize_ref(k_codes, k_scale, k_mn, bits, group_k, dim=2)  # scale (B, H, T/gk, D): groups of tokens


def dequantize_v_ref(v_codes: torch.Tensor, v_scale: torch.Tensor, v_mn: torch.Tensor, *, bits: int,
                     group_v: int) -> torch.Tensor:
    """Values (B, Hkv, T, D) float32 from per-token codes: codes · scale[d // group_v] + mn[d // group_v]."""
    return _dequantize_ref(v_codes, v_scale, v_mn, bits, group_v, dim=3)  # scale (B, H, T, D/gv): groups of channels


def kv_decode_ref(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_res, v_res, k_len, r_len, *,
                  bits: int, group_k: int, group_v: int, sm_scale: float | None = None) -> torch.Tensor:
    """Attention of ``q`` (B, Hq, D) over each sequence's valid quantized then residual tokens, in float32,
    returned in ``q.dtype``."""
    B, Hq, D = q.shape
    Hkv = k_codes.shape[1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    K = dequantize_k_ref(k_codes, k_scale, k_mn, bits=bits, group_k=group_k)
    V = dequantize_v_ref(v_codes, v_scale, v_mn, bits=bits, group_v=group_v)
    out = torch.empty(B, Hq, D, dtype=torch.float32, device=q.device)
    for b, (n_k, n_r) in enumerate(zip(k_len.tolist(), r_len.tolist())):
        keys, vals = [K[b, :, :n_k]], [V[b, :, :n_k]]
        if k_res is not None:
            keys.append(k_res[b, :, :n_r].float())
            vals.append(v_res[b, :, :n_r].float())
        keys = torch.cat(keys, 1).repeat_interleave(Hq // Hkv, dim=0)  # (Hq, N, D)
        vals = torch.cat(vals, 1).repeat_interleave(Hq // Hkv, dim=0)
        scores = torch.einsum("hd,hnd->hn", q[b].float(), keys) * sm_scale  # (Hq, N)
        out[b] = torch.einsum("hn,hnd->hd", scores.softmax(-1), vals)
    return out.to(q.dtype)


# ------------------------------------------------------------------- kernels

@triton.jit
def _scores(q, k, IEEE: tl.constexpr):
    """(GROUP_M, BLOCK_T) = q · kᵀ (tensor cores; fp32 exact when IEEE)."""
    if IEEE:
        return tl.dot(q, tl.trans(k), input_precision="ieee")
    return tl.dot(q, tl.trans(k))


@triton.jit
def _pv(p, v, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(p, v, acc, input_precision="ieee")
    return tl.dot(p.to(v.dtype), v, acc)


@triton.jit
def _online_softmax(s, valid, m, l, sm_scale_log2):
    """Scale raw scores to base 2, mask, and return (probabilities, alpha, new max, new sum) of the running softmax.

    A row whose tokens have all been invalid so far keeps m = −inf, l = 0: its max is taken as 0 for the
    exponentials, so no −inf − (−inf) = NaN appears.
    """
    s = tl.where(valid[None, :], s * sm_scale_log2, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    return p, alpha, m_new, l


@triton.jit
def _codes_to(m, DT: tl.constexpr):
    """The fp16 bit patterns 0x6400 | code of ``_load_codes`` -> the codes in DT, exactly.

    0x6400 is 1024.0 in fp16, whose mantissa step is 1: the pattern is the float 1024 + code, so one subtraction
    (packed two to an fp16 instruction) stands in for a quarter-rate int-to-float conversion. Codes ≤ 255 are
    exact in fp16, bf16 and fp32 alike, so other dtypes convert from fp16.
    """
    h = m.to(tl.float16, bitcast=True) - 1024.0
    if DT != tl.float16:
        h = h.to(DT)
    return h


@triton.jit
def _dequant(m, scale, mn, DT: tl.constexpr):
    """codes · scale + mn in DT. fp16 with fp16 scales: one fp16 fma (packed two to an instruction), which rounds
    the exact code · scale + min once; otherwise in float32, then one cast."""
    if DT == tl.float16 and scale.dtype == tl.float16:
        return tl.fma(_codes_to(m, DT), scale, mn)
    return (_codes_to(m, tl.float32) * scale.to(tl.float32) + mn.to(tl.float32)).to(DT)


@triton.jit
def _halves(x):
    """(…,) int32 -> (…, 2) int16: its low and high 16 bits."""
    return tl.join(x.to(tl.int16), (x >> 16).to(tl.int16))


@triton.jit
def _load_codes(ptr, rows, valid, BLOCK_D: tl.constexpr, BITS: tl.constexpr, WORDS: tl.constexpr,
                FULL_D: tl.constexpr, n_units):
    """A (BLOCK_T, BLOCK_D) int16 tile of fp16 bit patterns 0x6400 | code (see ``_codes_to``), in channel order.

    Codes are little-endian within a byte (4 bits: channel 2j in the low nibble of byte j) and bytes within a
    32-bit word. ``WORDS`` (a row's bytes a multiple of 4; ``ptr`` then points at int32 words): each word is
    unpacked by shifts and masks on 32 bits, two fp16 patterns per operation — 4 bits: (w >> 4i) & 0x000F000F holds
    channels i and i + 4 of the word's eight, 8 bits: (w >> 8i) & 0x00FF00FF channels i and i + 2 — and
    tl.join puts the halves back in channel order. Otherwise bytes, one code (or two nibbles) at a time.
    ``n_units``: the row's words (or bytes) when not FULL_D.
    """
    PER: tl.constexpr = 32 // BITS if WORDS else 8 // BITS  # codes per loaded unit
    offs = tl.arange(0, BLOCK_D // PER)
    if FULL_D:
        mask = valid[:, None]
    else:
        mask = valid[:, None] & (offs < n_units)[None, :]
    w = tl.load(ptr + rows[:, None] + offs[None, :], mask=mask, other=0)
    BT: tl.constexpr = w.shape[0]
    if WORDS:
        if BITS == 4:
            a = _halves((w & 0x000F000F) | 0x64006400)  # channels 0, 4
            b = _halves(((w >> 4) & 0x000F000F) | 0x64006400)  # 1, 5
            c = _halves(((w >> 8) & 0x000F000F) | 0x64006400)  # 2, 6
            d = _halves(((w >> 12) & 0x000F000F) | 0x64006400)  # 3, 7
            # (half h, s, t) -> channel 4h + 2s + t: join adds the fastest axis
            m = tl.reshape(tl.join(tl.join(a, c), tl.join(b, d)), (BT, BLOCK_D))
        else:
            a = _halves((w & 0x00FF00FF) | 0x64006400)  # channels 0, 2
            b = _halves(((w >> 8) & 0x00FF00FF) | 0x64006400)  # 1, 3
            m = tl.reshape(tl.join(a, b), (BT, BLOCK_D))
    else:
        c = w.to(tl.int16)
        if BITS == 4:
            c = tl.reshape(tl.join(c & 15, c >> 4), (BT, BLOCK_D))
        m = c | 0x6400
    return m


@triton.jit
def _kv_decode_split_kernel(
    # pointers
    q_ptr, kc_ptr, ks_ptr, kmn_ptr, vc_ptr, vs_ptr, vmn_ptr, kr_ptr, vr_ptr, k_len_ptr, r_len_ptr,
    o_part_ptr, m_part_ptr, l_part_ptr,
    # sizes
    HKV, D, NQ, Q_PER, R_PER, sm_scale_log2,
    # strides (each tensor contiguous: (B, H) flattened into one "bh" stride)
    stride_qb, stride_qh, stride_kc_bh, stride_kc_t, stride_ks_bh, stride_ks_g,
    stride_vc_bh, stride_vc_t, stride_vs_bh, stride_vs_t, stride_r_bh, stride_r_t,
    # meta-parameters
    GROUP: tl.constexpr, GROUP_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BITS: tl.constexpr, GROUP_K: tl.constexpr, GROUP_V: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr, V_ROWS: tl.constexpr, K_ROWS: tl.constexpr, FULL_D: tl.constexpr, WORDS: tl.constexpr,
):
    """One (sequence, KV head) pair, its GROUP query heads (padded to GROUP_M ≥ 16 rows for tl.dot), one split.

    Splits 0 … NQ−1 cover the quantized tokens [s·Q_PER, (s+1)·Q_PER) ∩ [0, k_len[b]); the rest cover the
    residual tokens likewise with R_PER and r_len[b]. K and V tiles are loaded whole (each token's bytes in one
    contiguous, vectorised load), dequantized in registers to q's dtype (float32 when q is float32) and used by
    all GROUP query heads through two tensor-core products.

    Fewer instructions per byte (decode is memory-bound only if the arithmetic per byte is small):

    * codes become floats through the mantissa trick of ``_codes_to``, not an int-to-float conversion;
    * when a tile lies in one key group, its key scale and min are the same for every token, so they are folded
      into the query instead of the keys: q·kᵀ = (q ⊙ scale)·codesᵀ + q·min — the codes only need a conversion;
    * ``V_ROWS``: each token's few value scales (D / GROUP_V of them) are loaded once as a (BLOCK_T, D / GROUP_V)
      tile and broadcast across their channels in registers, instead of one gathered load per element
      (needs D and GROUP_V powers of two, D = BLOCK_D; the launcher decides);
    * ``K_ROWS``: a tile of whole key groups (BLOCK_T a multiple of GROUP_K) loads its BLOCK_T / GROUP_K key-scale
      rows once and broadcasts them over their tokens, likewise;
    * ``FULL_D`` (D = BLOCK_D): no channel mask, so the loads are as wide as the rows allow.
    """
    N_UNITS = D * BITS // (32 if WORDS else 8)  # words (or bytes) of one token's codes
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    bh64 = pid_bh.to(tl.int64)
    offs_g = tl.arange(0, GROUP_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_tt = tl.arange(0, BLOCK_T)
    mask_g = offs_g < GROUP
    if FULL_D:
        mask_d = offs_d < BLOCK_D
    else:
        mask_d = offs_d < D
    heads = kvh * GROUP + offs_g  # (GROUP_M,) query heads of this KV head
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:  # bfloat16 under the interpreter, whose bf16 tl.dot is wrong: multiply in float32 there
        q = q.to(tl.float32)
    DT = q.dtype
    m = tl.full((GROUP_M,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((GROUP_M,), dtype=tl.float32)
    acc = tl.zeros((GROUP_M, BLOCK_D), dtype=tl.float32)
    if pid_s < NQ:
        # ---- quantized split: dequantize codes in registers
        start = pid_s * Q_PER
        end = tl.minimum(start + Q_PER, tl.load(k_len_ptr + b))
        kc_base = kc_ptr + bh64 * stride_kc_bh
        vc_base = vc_ptr + bh64 * stride_vc_bh
        ks_base = ks_ptr + bh64 * stride_ks_bh
        kmn_base = kmn_ptr + bh64 * stride_ks_bh
        vs_base = vs_ptr + bh64 * stride_vs_bh
        vmn_base = vmn_ptr + bh64 * stride_vs_bh
        GV: tl.constexpr = BLOCK_D // GROUP_V  # value groups per token (V_ROWS: D = BLOCK_D)
        qf = q.to(tl.float32)
        for t0 in range(start, end, BLOCK_T):
            offs_t = t0 + offs_tt
            valid = offs_t < end
            m_td = valid[:, None] & mask_d[None, :]
            kc = _load_codes(kc_base, offs_t * stride_kc_t, valid, BLOCK_D, BITS, WORDS, FULL_D, N_UNITS)
            vc = _load_codes(vc_base, offs_t * stride_vc_t, valid, BLOCK_D, BITS, WORDS, FULL_D, N_UNITS)
            if GROUP_K % BLOCK_T == 0:  # the tile lies in one key group: fold its scale and min into q
                krow = (t0 // GROUP_K) * stride_ks_g + offs_d
                ks = tl.load(ks_base + krow, mask=mask_d, other=0.0).to(tl.float32)[None, :]
                km = tl.load(kmn_base + krow, mask=mask_d, other=0.0).to(tl.float32)[None, :]
                bias = tl.sum(qf * km, axis=1)
                s = _scores((qf * ks).to(DT), _codes_to(kc, DT), IEEE) + bias[:, None]
            else:
                if K_ROWS:  # whole key groups per tile: (BLOCK_T / GROUP_K, D) scale rows broadcast over their tokens
                    NG: tl.constexpr = BLOCK_T // GROUP_K
                    g_row = ((t0 // GROUP_K) + tl.arange(0, NG))[:, None] * stride_ks_g + offs_d[None, :]
                    g_ok = (t0 + tl.arange(0, NG) * GROUP_K < end)[:, None] & mask_d[None, :]
                    ks_g = tl.load(ks_base + g_row, mask=g_ok, other=0.0)
                    km_g = tl.load(kmn_base + g_row, mask=g_ok, other=0.0)
                    ks = tl.reshape(tl.broadcast_to(ks_g[:, None, :], (NG, GROUP_K, BLOCK_D)), (BLOCK_T, BLOCK_D))
                    km = tl.reshape(tl.broadcast_to(km_g[:, None, :], (NG, GROUP_K, BLOCK_D)), (BLOCK_T, BLOCK_D))
                else:
                    g_row = (offs_t // GROUP_K)[:, None] * stride_ks_g + offs_d[None, :]
                    ks = tl.load(ks_base + g_row, mask=m_td, other=0.0)
                    km = tl.load(kmn_base + g_row, mask=m_td, other=0.0)
                s = _scores(q, _dequant(kc, ks, km, DT), IEEE)
            if V_ROWS:  # (BLOCK_T, GV) scales per token, broadcast over each group's GROUP_V channels in registers
                v_tile = offs_t[:, None] * stride_vs_t + tl.arange(0, GV)[None, :]
                vs_t = tl.load(vs_base + v_tile, mask=valid[:, None], other=0.0)
                vm_t = tl.load(vmn_base + v_tile, mask=valid[:, None], other=0.0)
                vs = tl.reshape(tl.broadcast_to(vs_t[:, :, None], (BLOCK_T, GV, GROUP_V)), (BLOCK_T, BLOCK_D))
                vm = tl.reshape(tl.broadcast_to(vm_t[:, :, None], (BLOCK_T, GV, GROUP_V)), (BLOCK_T, BLOCK_D))
            else:
                v_col = offs_t[:, None] * stride_vs_t + (offs_d // GROUP_V)[None, :]
                vs = tl.load(vs_base + v_col, mask=m_td, other=0.0)
                vm = tl.load(vmn_base + v_col, mask=m_td, other=0.0)
            v = _dequant(vc, vs, vm, DT)
            p, alpha, m, l = _online_softmax(s, valid, m, l, sm_scale_log2)
            acc = _pv(p, v, acc * alpha[:, None], IEEE)
    else:
        # ---- residual split: full-precision keys and values
        start = (pid_s - NQ) * R_PER
        end = tl.minimum(start + R_PER, tl.load(r_len_ptr + b))
        kr_base = kr_ptr + bh64 * stride_r_bh
        vr_base = vr_ptr + bh64 * stride_r_bh
        # not pipelined: a residual window is a few tiles, and staging its fp16 tiles in shared memory would size
        # every program's shared memory (both branches are one kernel) and so cut the programs an SM holds
        for t0 in tl.range(start, end, BLOCK_T, num_stages=1):
            offs_t = t0 + offs_tt
            valid = offs_t < end
            m_td = valid[:, None] & mask_d[None, :]
            row = offs_t[:, None] * stride_r_t + offs_d[None, :]
            k = tl.load(kr_base + row, mask=m_td, other=0.0).to(DT)
            v = tl.load(vr_base + row, mask=m_td, other=0.0).to(DT)
            s = _scores(q, k, IEEE)
            p, alpha, m, l = _online_softmax(s, valid, m, l, sm_scale_log2)
            acc = _pv(p, v, acc * alpha[:, None], IEEE)
    # ---- partial results: (B·Hq, n_splits) max and sum, (B·Hq, n_splits, D) output
    rows = (b * HKV * GROUP + heads).to(tl.int64) * n_splits + pid_s  # (GROUP_M,)
    tl.store(m_part_ptr + rows, m, mask=mask_g)
    tl.store(l_part_ptr + rows, l, mask=mask_g)
    tl.store(o_part_ptr + rows[:, None] * D + offs_d[None, :], acc, mask=mask_g[:, None] & mask_d[None, :])


@triton.jit
def _kv_decode_combine_kernel(
    # pointers
    o_part_ptr, m_part_ptr, l_part_ptr, out_ptr,
    # sizes
    D, N_SPLITS,
    # meta-parameters
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out = Σ_s 2^(m_s − M) · o_s / Σ_s 2^(m_s − M) · l_s for one (sequence, query head), M = max_s m_s.

    A split with no valid token has m_s = −inf, l_s = 0, o_s = 0: its weight is 0.
    """
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < N_SPLITS
    m = tl.load(m_part_ptr + row * N_SPLITS + offs_s, mask=mask_s, other=float("-inf"))
    l = tl.load(l_part_ptr + row * N_SPLITS + offs_s, mask=mask_s, other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # (BLOCK_S,)
    total = tl.sum(w * l, axis=0)
    total = tl.where(total == 0.0, 1.0, total)  # only if no token at all (rejected by the launcher)
    o = tl.load(o_part_ptr + (row * N_SPLITS + offs_s[:, None]) * D + offs_d[None, :],
                mask=mask_s[:, None] & (offs_d[None, :] < D), other=0.0)  # (BLOCK_S, BLOCK_D)
    out = tl.sum(w[:, None] * o, axis=0) / total
    tl.store(out_ptr + row * D + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < D)


# ------------------------------------------------------------------ launcher

# On CUDA a region is cut into max(tokens / TOKENS_PER_SPLIT, PROGRAMS_PER_SM · SMs / (B · Hkv)) splits — long
# splits amortise each program's start and partial write, enough programs fill the SMs — but no split gets fewer
# than MIN_TILES_PER_SPLIT tiles. (The second version's H200 sweep — in the git history as
# benchmarks/results/kv_decode_tune_h200.json — found best split counts of 64 at B = 1 and 16 at B = 32, about 2,048
# tokens per split; the third version's, the "tune" of benchmarks/results/kv_decode_h200.json, kept 64-token tiles,
# 4 warps and 3 pipeline stages.)
PROGRAMS_PER_SM = 4
TOKENS_PER_SPLIT = 2048
MIN_TILES_PER_SPLIT = 4
# warps per split program, and the depth of its software pipeline (loads of the next tiles in flight)
NUM_WARPS = 4
NUM_STAGES = 3
# the interpreter runs programs one after the other: few splits keep the tests fast
INTERPRETER_MAX_SPLITS = 4


def _region_splits(n_tokens: int, per_region: int, block_t: int) -> tuple[int, int]:
    """(tokens per split, number of splits) that cut ``n_tokens`` into ≤ ``per_region`` whole-tile pieces."""
    if n_tokens == 0:
        return block_t, 0
    per = triton.cdiv(triton.cdiv(n_tokens, max(1, per_region)), block_t) * block_t
    return per, triton.cdiv(n_tokens, per)


def kv_decode_attention(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_res, v_res, k_len, r_len, *,
                        bits: int, group_k: int, group_v: int, sm_scale: float | None = None,
                        num_splits: int | None = None, block_t: int | None = None,
                        max_len: tuple[int, int] | None = None, num_warps: int | None = None,
                        num_stages: int | None = None) -> torch.Tensor:
    """One decode step of attention over a quantized + residual KV cache -> (B, Hq, D) in ``q.dtype``.

    ``num_splits``: the number of pieces each non-empty region (quantized tokens, residual
    tokens) is cut into — at most, as each piece covers whole BLOCK_T tiles; None picks
    about ``PROGRAMS_PER_SM`` programs per SM on CUDA (few in the interpreter).
    ``block_t``: tokens per loop step (a power of two ≥ 16); None picks by head dim and GQA group.
    ``num_warps``: warps per split program (None: ``NUM_WARPS``); ``num_stages``: software-pipelining depth of
    the token loop (None: ``NUM_STAGES``).
    ``k_res``/``v_res`` may be None (no residual window; ``r_len`` must then be all zero).
    Lengths are read back to the host to check them and to size the splits, which a CUDA graph
    capture cannot do: a server that knows its longest sequences passes ``max_len=(max k_len, max r_len)``
    instead (checked against T and R; each ``k_len[b]`` must then not exceed it — tokens past it are not read).
    """
    check(bits in (8, 4), f"bits={bits}: allowed 8 or 4")
    check(q.dtype in _Q_DTYPES, f"q must be float16, bfloat16 or float32, got {q.dtype}")
    check(q.ndim == 3, f"q must be 3-D (B, Hq, D), got shape {tuple(q.shape)}")
    B, Hq, D = q.shape
    for name, t in (("k_codes", k_codes), ("v_codes", v_codes)):
        check(t.dtype == torch.uint8, f"{name} must be uint8, got {t.dtype}")
        check(t.ndim == 4, f"{name} must be 4-D (B, Hkv, T, D*bits/8), got shape {tuple(t.shape)}")
    check(bits == 8 or D % 2 == 0, f"D={D}: must be even for 4-bit codes (two per byte)")
    Hkv, T = k_codes.shape[1], k_codes.shape[2]
    check(Hkv >= 1 and Hq % Hkv == 0, f"Hq={Hq} must be a multiple of Hkv={Hkv} (k_codes.shape[1])")
    code_shape = (B, Hkv, T, D * bits // 8)
    for name, t in (("k_codes", k_codes), ("v_codes", v_codes)):
        check(tuple(t.shape) == code_shape,
              f"{name} has shape {tuple(t.shape)}: allowed {code_shape} for q {tuple(q.shape)} with bits={bits}")
    check(isinstance(group_k, int) and group_k > 0 and T % group_k == 0,
          f"group_k={group_k!r}: must be a positive divisor of T={T}")
    check(isinstance(group_v, int) and group_v > 0 and D % group_v == 0,
          f"group_v={group_v!r}: must be a positive divisor of D={D}")
    for name, t, shape in (("k_scale", k_scale, (B, Hkv, T // group_k, D)), ("k_mn", k_mn, (B, Hkv, T // group_k, D)),
                           ("v_scale", v_scale, (B, Hkv, T, D // group_v)), ("v_mn", v_mn, (B, Hkv, T, D // group_v))):
        check(t.dtype in _SCALE_DTYPES, f"{name} must be float16 or float32, got {t.dtype}")
        check(tuple(t.shape) == shape, f"{name} has shape {tuple(t.shape)}: allowed {shape}")
    check(k_mn.dtype == k_scale.dtype and v_mn.dtype == v_scale.dtype,
          f"k_mn/v_mn must have the dtype of k_scale/v_scale, got {k_mn.dtype}/{v_mn.dtype} "
          f"and {k_scale.dtype}/{v_scale.dtype}")
    check((k_res is None) == (v_res is None), "k_res and v_res must both be given or both be None")
    if k_res is None:
        k_res = v_res = torch.empty(B, Hkv, 0, D, dtype=q.dtype, device=q.device)
    R = k_res.shape[2] if k_res.ndim == 4 else -1
    for name, t in (("k_res", k_res), ("v_res", v_res)):
        check(t.dtype == q.dtype, f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        check(t.ndim == 4 and tuple(t.shape) == (B, Hkv, R, D),
              f"{name} has shape {tuple(t.shape)}: allowed (B, Hkv, R, D) = {(B, Hkv, max(R, 0), D)}")
    for name, t in (("k_len", k_len), ("r_len", r_len)):
        check(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}")
        check(tuple(t.shape) == (B,), f"{name} has shape {tuple(t.shape)}: allowed ({B},)")
    tensors = (("q", q), ("k_codes", k_codes), ("k_scale", k_scale), ("k_mn", k_mn), ("v_codes", v_codes),
               ("v_scale", v_scale), ("v_mn", v_mn), ("k_res", k_res), ("v_res", v_res), ("k_len", k_len),
               ("r_len", r_len))
    for name, t in tensors:
        check(t.device == q.device, f"{name} is on {t.device}, q on {q.device}")
        check(t.is_contiguous(), f"{name} must be contiguous")
    if max_len is None:
        k_lens, r_lens = k_len.tolist(), r_len.tolist()
        for b, (n_k, n_r) in enumerate(zip(k_lens, r_lens)):
            check(0 <= n_k <= T and n_k % group_k == 0,
                  f"k_len[{b}]={n_k}: allowed a multiple of group_k={group_k} in 0 … T={T}")
            check(0 <= n_r <= R, f"r_len[{b}]={n_r}: allowed 0 … R={R}")
            check(n_k + n_r >= 1, f"k_len[{b}] + r_len[{b}] = 0: every sequence needs at least one token")
        max_k, max_r = (max(k_lens), max(r_lens)) if B else (0, 0)
    else:
        check(isinstance(max_len, tuple) and len(max_len) == 2 and all(isinstance(n, int) for n in max_len),
              f"max_len={max_len!r}: allowed None or a pair of ints (max k_len, max r_len)")
        max_k, max_r = max_len
        check(0 <= max_k <= T and max_k % group_k == 0,
              f"max_len[0]={max_k}: allowed a multiple of group_k={group_k} in 0 … T={T}")
        check(0 <= max_r <= R, f"max_len[1]={max_r}: allowed 0 … R={R}")
        check(max_k + max_r >= 1, f"max_len={max_len}: at least one token")
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    check(math.isfinite(sm_scale) and sm_scale > 0, f"sm_scale={sm_scale}: must be a positive finite number")
    check(num_splits is None or (isinstance(num_splits, int) and num_splits >= 1),
          f"num_splits={num_splits!r}: allowed None or a positive integer")
    check(block_t is None or (isinstance(block_t, int) and block_t >= 16 and block_t & (block_t - 1) == 0),
          f"block_t={block_t!r}: allowed None or a power of two ≥ 16")
    check(num_warps is None or num_warps in (1, 2, 4, 8, 16), f"num_warps={num_warps!r}: allowed None, 1, 2, 4, 8 or 16")
    check(num_stages is None or (isinstance(num_stages, int) and 1 <= num_stages <= 8),
          f"num_stages={num_stages!r}: allowed None or 1 … 8")
    if B == 0 or Hq == 0:
        return torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)

    GROUP = Hq // Hkv
    GROUP_M = max(16, triton.next_power_of_2(GROUP))  # tl.dot needs at least 16 rows: pad the query heads
    BLOCK_D = max(16, triton.next_power_of_2(D))  # tl.dot needs at least 16 channels
    # 64-token tiles: on the H200 they beat 32-token tiles inside one key group (whose scales fold into q) even
    # when a tile spans two key groups of 32 (the tune sweep); smaller only when no multiple of 16 key rows fits
    BLOCK_T = block_t or 64
    # ---- splits: cut the tokens that some sequence holds (not the capacity) into homogeneous pieces
    interpreted = interpreting() or not q.is_cuda
    # the interpreter's bfloat16 tl.dot returns garbage (seen with triton 3.8 on CPU): there bf16 multiplies in float32
    upcast = interpreted and q.dtype == torch.bfloat16
    if num_splits is None:
        if interpreted:
            target = INTERPRETER_MAX_SPLITS
        else:
            sms = torch.cuda.get_device_properties(q.device).multi_processor_count
            target = max(1, triton.cdiv(PROGRAMS_PER_SM * sms, B * Hkv))
        min_tokens = MIN_TILES_PER_SPLIT * BLOCK_T
        long_k = 0 if interpreted else triton.cdiv(max_k, TOKENS_PER_SPLIT)
        n_q = min(max(target, long_k), triton.cdiv(max_k, min_tokens))
        n_r = min(target, triton.cdiv(max_r, min_tokens))
    else:
        n_q = n_r = num_splits
    q_per, n_q = _region_splits(max_k, n_q, BLOCK_T)
    r_per, n_r = _region_splits(max_r, n_r, BLOCK_T)
    n_splits = n_q + n_r
    # an empty region is never read, but its pointer must still have the right element type
    if T == 0:
        k_codes = v_codes = torch.zeros(4, dtype=torch.uint8, device=q.device)  # one int32 word
        k_scale = k_mn = torch.zeros(1, dtype=k_scale.dtype, device=q.device)
        v_scale = v_mn = torch.zeros(1, dtype=v_scale.dtype, device=q.device)
    if R == 0:
        k_res = v_res = torch.zeros(1, dtype=q.dtype, device=q.device)

    # a row of a multiple of 4 bytes is read as int32 words and unpacked two fp16 patterns per operation
    nb = D * bits // 8
    words = nb % 4 == 0 and all(t.numel() == 0 or t.data_ptr() % 4 == 0 for t in (k_codes, v_codes))
    unit = 4 if words else 1
    if words:
        k_codes, v_codes = k_codes.view(torch.int32), v_codes.view(torch.int32)
    o_part = torch.empty(B * Hq, n_splits, D, dtype=torch.float32, device=q.device)
    m_part = torch.empty(B * Hq, n_splits, dtype=torch.float32, device=q.device)
    l_part = torch.empty(B * Hq, n_splits, dtype=torch.float32, device=q.device)
    _kv_decode_split_kernel[(B * Hkv, n_splits)](
        q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_res, v_res, k_len, r_len, o_part, m_part, l_part,
        Hkv, D, n_q, q_per, r_per, sm_scale * math.log2(math.e),
        Hq * D, D, T * nb // unit, nb // unit, (T // group_k) * D, D,
        T * nb // unit, nb // unit, T * (D // group_v), D // group_v, R * D, D,
        GROUP=GROUP, GROUP_M=GROUP_M, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, BITS=bits, GROUP_K=group_k, GROUP_V=group_v,
        IEEE=q.dtype == torch.float32 or upcast, UPCAST=upcast, num_warps=num_warps or NUM_WARPS,
        num_stages=num_stages or NUM_STAGES,
        V_ROWS=(BLOCK_D == D and group_v & (group_v - 1) == 0), FULL_D=BLOCK_D == D,
        K_ROWS=BLOCK_T % group_k == 0 and group_k & (group_k - 1) == 0, WORDS=words,
    )
    out = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    _kv_decode_combine_kernel[(B * Hq,)](
        o_part, m_part, l_part, out, D, n_splits,
        BLOCK_S=triton.next_power_of_2(n_splits), BLOCK_D=BLOCK_D, num_warps=1 if BLOCK_D <= 128 else 2,
    )
    return out
