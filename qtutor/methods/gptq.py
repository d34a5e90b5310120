"""GPTQ: one-shot weight quantization with second-order error compensation.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers" (ICLR 2023), Algorithm 1, following the reference
code (IST-DASLab/gptq, ``gptq.py``: ``GPTQ.add_batch`` and ``fasterquant``):

* ``H = 2 X Xᵀ / n`` accumulated as a running mean over calibration batches;
* dead columns (``H_jj = 0``) get ``H_jj = 1`` and a zero weight;
* dampening ``λ = percdamp · mean(diag H)`` added to the diagonal;
* ``Hinv`` = upper Cholesky factor of ``H⁻¹``, computed on one CPU thread
  (:func:`one_cpu_thread`): LAPACK's Cholesky gives different last bits with
  different thread counts, and a last bit can move a weight by a grid step;
* columns processed left to right in lazy batches of ``blocksize`` (128): each
  column is quantized, its error ``(w − q) / Hinv_jj`` is spread over the
  remaining columns of the batch, and the batch's accumulated error over all
  later columns at the end of the batch;
* group-wise parameters computed when a group starts (on the already-updated
  weights), or up front for every group (``static_groups``); ``act_order``
  processes columns by decreasing ``diag H``.

The grid is the reference's: unsigned codes 0…2ᵇ−1 with a per-row (or
per-group) scale and zero-point; "symmetric" puts the zero-point at
(2ᵇ)/2 — not qtutor's signed symmetric grid.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..primitives.grid import QuantizedWeight, check_n_bits_group_size

__all__ = ["GPTQConfig", "GPTQ", "gptq_grid_params", "gptq_fake_quant", "one_cpu_thread", "check_weight",
           "check_activations"]


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the block on one CPU thread, then restore the thread count.

    MKL's Cholesky factor and inverse differ in the last bits between one and
    two threads (measured for every size from 48 to 1536), so GPTQ's result
    would depend on the thread count; on a shared machine one thread is also
    faster than two that spin-wait. (GPU work is unaffected.)
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ's knobs, with the reference defaults."""

    n_bits: int = 4
    group_size: int | None = 128  # None: one scale per output row
    symmetric: bool = False
    act_order: bool = False
    static_groups: bool = False
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self) -> None:
        check_n_bits_group_size(self.n_bits, self.group_size)
        if not 0.0 < self.percdamp < 1.0:
            raise ValueError(f"percdamp={self.percdamp}: must be in (0, 1)")
        if self.blocksize < 1:
            raise ValueError(f"blocksize={self.blocksize}: must be positive")


def gptq_grid_params(w: torch.Tensor, n_bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``scale`` and ``zero`` (both (rows, 1) float) of the reference ``Quantizer.find_params``."""
    maxq = 2**n_bits - 1
    xmin = torch.minimum(w.min(dim=1).values, torch.zeros(1, device=w.device))
    xmax = torch.maximum(w.max(dim=1).values, torch.zeros(1, device=w.device))
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    # an all-zero row takes the reference's grid [-1, 1]; so does a row of subnormals whose range / maxq
    # underflows to 0 (the reference would divide by that zero scale and return NaN)
    empty = ((xmin == 0) & (xmax == 0)) | ((xmax - xmin) / maxq == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if not bool(torch.isfinite(scale).all()):  # finite w whose range max − min overflows float32
        r = int((~torch.isfinite(scale)).nonzero()[0])
        raise ValueError(f"row {r}: the range [{float(xmin[r]):.3g}, {float(xmax[r]):.3g}] overflows float32, so the "
                         "grid's scale would be Inf; rescale the weights")
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def gptq_fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, n_bits: int) -> torch.Tensor:
    """``scale · (clamp(round(w / scale) + zero, 0, 2ᵇ−1) − zero)``."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**n_bits - 1)
    return scale * (q - zero)


_F32_MAX = torch.finfo(torch.float32).max


def check_weight(weight: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the layer unless ``weight`` is a finite float tensor that fits float32."""
    if not weight.is_floating_point():
        raise ValueError(f"{name}: the weight has dtype {weight.dtype}; GPTQ quantizes floating-point weights")
    w = weight.detach()
    if not bool(torch.isfinite(w).all()):
        bad = (~torch.isfinite(w)).nonzero()[0].tolist()
        raise ValueError(f"{name}: the weights contain NaN or Inf (first at {bad}); fix the weights, not the "
                         "calibration data")
    if w.numel() and float(w.abs().max()) > _F32_MAX:
        raise ValueError(f"{name}: the weights reach {float(w.abs().max()):.3g}, beyond float32, in which GPTQ runs")
    # the grid spans [min(w, 0), max(w, 0)] of a row or group: its width must stay finite in float32
    wf = w.float()
    if w.numel() and bool(torch.isinf(wf.clamp(min=0).amax(1) - wf.clamp(max=0).amin(1)).any()):
        raise ValueError(f"{name}: the range max − min of a row of the weights overflows float32; the grid's scale "
                         "would be Inf; rescale the weights")


def check_activations(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the layer unless the calibration activations ``x`` are a non-empty float tensor."""
    if not x.is_floating_point():
        raise ValueError(f"{name}: calibration activations have dtype {x.dtype}; expected a float tensor")
    if x.numel() == 0:
        raise ValueError(f"{name}: an empty batch of calibration activations (shape {tuple(x.shape)}); "
                         "the calibration set has no tokens")


class GPTQ:
    """Accumulates the Hessian of one linear layer and quantizes its weight."""

    def __init__(self, weight: torch.Tensor, name: str = "layer") -> None:
        if weight.ndim != 2:
            raise ValueError(f"{name}: weight must be 2-D (out_features, in_features), got {tuple(weight.shape)}")
        check_weight(weight, name)
        self.name = name
        self.weight = weight
        self.columns = weight.shape[1]
        self.H = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=weight.device)
        self.nsamples = 0
        self.nonfinite_input: list[int] | None = None  # where the first NaN/Inf activation was seen

    def add_batch(self, x: torch.Tensor) -> None:
        """Add layer inputs ``x`` (..., in_features) to the running mean ``H = 2 X Xᵀ / n``."""
        if x.shape[-1] != self.columns:
            raise ValueError(f"{self.name}: input has {x.shape[-1]} features, the weight expects {self.columns}")
        check_activations(x, self.name)
        if self.nonfinite_input is None and not bool(torch.isfinite(x).all()):
            # kept out of H and reported by quantize(), which no result can come from
            self.nonfinite_input = (~torch.isfinite(x)).nonzero()[0].tolist()
        if self.nonfinite_input is not None:
            return
        x = x.reshape(-1, self.columns).float()  # (tokens, in)
        n = x.shape[0]
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = math.sqrt(2 / self.nsamples) * x
        self.H += x.T @ x

    def _hinv(self, H: torch.Tensor, percdamp: float) -> torch.Tensor:
        diag = torch.arange(self.columns, device=H.device)
        damp = percdamp * torch.mean(torch.diag(H))
        for attempt in range(4):  # retry with 10x more damping before giving up
            Hd = H.clone()
            Hd[diag, diag] += damp * 10**attempt
            with one_cpu_thread():  # the same bits at every thread count
                L, info = torch.linalg.cholesky_ex(Hd)
                if info == 0:
                    Hinv = torch.cholesky_inverse(L)
                    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U
        raise ValueError(
            f"{self.name}: the Hessian is not positive definite even with dampening {percdamp * 1000:g}% of its "
            "mean diagonal; the calibration inputs are degenerate (too few tokens, or NaN/Inf activations)"
        )

    @torch.no_grad()
    def quantize(self, config: GPTQConfig) -> QuantizedWeight:
        """Run GPTQ; returns codes, scales (out, n_groups), zero-points and ``g_idx`` (in,).

        ``.dequantize()`` of the result is the reference's ``Q`` bit for bit.
        """
        if self.nonfinite_input is not None:
            raise ValueError(f"{self.name}: the Hessian is not positive definite (not even finite): the calibration "
                             f"activations (the layer's inputs) contain NaN or Inf (first at {self.nonfinite_input} of "
                             "a batch); the weights of this layer are not the cause")
        if self.nsamples == 0:
            raise ValueError(f"{self.name}: no calibration data was added (call add_batch first)")
        check_weight(self.weight, self.name)  # it may have changed since __init__
        if not bool(torch.isfinite(self.H).all()):
            raise ValueError(f"{self.name}: the Hessian is not positive definite (not finite): 2·XXᵀ/n of the "
                             "calibration activations overflows float32 (activations too large); the weights are fine")
        W = self.weight.detach().clone().float()
        rows, columns = W.shape
        gs = config.group_size or columns
        H = self.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        groups = None
        if config.static_groups:
            groups = [gptq_grid_params(W[:, i:i + gs], config.n_bits, config.symmetric) for i in range(0, columns, gs)]
        perm = torch.arange(columns, device=W.device)
        if config.act_order:
            perm = torch.argsort(torch.diag(H), descending=True)
            W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
        Hinv = self._hinv(H, config.percdamp)
        Q = torch.zeros_like(W)  # integer codes, kept in float
        n_groups = -(-columns // gs)
        scales = torch.zeros(rows, n_groups, device=W.device)
        zeros = torch.zeros(rows, n_groups, device=W.device)
        maxq = 2**config.n_bits - 1
        scale, zero = (t[:, 0] for t in gptq_grid_params(W, config.n_bits, config.symmetric))  # (rows,)
        g_prev = -1
        for i1 in range(0, columns, config.blocksize):
            i2 = min(i1 + config.blocksize, columns)
            W1 = W[:, i1:i2].clone()  # (rows, count)
            Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)  # codes, scaled errors
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                g = int(perm[col]) // gs if config.static_groups else col // gs
                if g != g_prev:
                    if config.static_groups:
                        scale, zero = (t[:, 0] for t in groups[g])
                    elif config.group_size is not None:
                        # as the reference: from W, whose columns inside the current lazy batch
                        # do not yet carry this batch's updates
                        scale, zero = (t[:, 0] for t in gptq_grid_params(W[:, col:col + gs], config.n_bits,
                                                                          config.symmetric))
                    scales[:, g], zeros[:, g], g_prev = scale, zero, g
                w = W1[:, i]
                code = torch.round(w / scale).add_(zero).clamp_(0, maxq)
                Q1[:, i] = code
                err = (w - scale * (code - zero)) / Hinv1[i, i]  # gptq_fake_quant, keeping the code
                W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
                Err1[:, i] = err
            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        ends = (scales * (0 - zeros), scales * (maxq - zeros))  # the grid's end points, as dequantize computes them
        if not (bool(torch.isfinite(Q).all()) and bool(torch.isfinite(scales).all())
                and bool(torch.isfinite(zeros).all()) and all(bool(torch.isfinite(e).all()) for e in ends)):
            raise ValueError(f"{self.name}: GPTQ's updated weights or its grid overflow float32 (the weight's range "
                             "and the error compensation are too large); nothing was written")
        position = torch.arange(columns, device=W.device)
        g_idx = position // gs if config.static_groups else (position // gs)[invperm]
        return QuantizedWeight(Q[:, invperm].to(torch.uint8), scales, zeros.to(torch.uint8),
                               g_idx.to(torch.int32), config.n_bits, config.group_size)
