"""Calibration observers: stream activations in, get scales out.

Each observer accumulates statistics batch by batch (nothing is stored but the
statistics) and returns :class:`~qtutor.primitives.QParams` for a
:class:`~qtutor.primitives.QuantSpec` with ``PerTensor()`` or
``PerChannel(axis)`` granularity (``axis`` indexes the channels of the
observed tensors, e.g. ``-1`` for the hidden dimension of ``(tokens, hidden)``).

* :class:`MinMaxObserver` — running min and max (PyTorch's default).
* :class:`MovingAverageMinMaxObserver` — exponential moving average of each batch's min/max.
* :class:`PercentileObserver` — clip at the p-th percentile of ``|x|``.
* :class:`MSEObserver` — the clipping ratio that minimises the expected squared error.
* :class:`EntropyObserver` — TensorRT's KL-divergence calibration (Migacz, "8-bit
  Inference with TensorRT", GTC 2017): the threshold whose quantized histogram
  stays closest to the original one.

The last three build a histogram of ``|x|`` (2048 bins by default, the range
doubling, and bins merging pairwise, when a batch exceeds it), so they produce
symmetric scales only.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .primitives import PerChannel, PerTensor, QParams, QuantSpec, check_float_tensor

__all__ = [
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
    "ObserverGroup",
]


class Observer:
    """Base class: channel bookkeeping shared by every observer."""

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor()) -> None:
        if not isinstance(granularity, (PerTensor, PerChannel)):
            raise ValueError(
                f"granularity={granularity!r}: observers support PerTensor() or PerChannel(axis)"
            )
        self.granularity = granularity
        self.n_batches = 0
        self.n_channels: int | None = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as (channels, values) float32."""
        check_float_tensor(x)
        if x.numel() == 0:
            raise ValueError(f"x has shape {tuple(x.shape)}: an empty batch has no statistics")
        x = x.detach().float()
        if isinstance(self.granularity, PerTensor):
            rows = x.reshape(1, -1)
        else:
            axis = self.granularity.axis
            if not -x.ndim <= axis < x.ndim:
                raise ValueError(f"axis={axis}: out of range for a batch of shape {tuple(x.shape)}")
            rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        if self.n_channels is None:
            self.n_channels = rows.shape[0]
        elif rows.shape[0] != self.n_channels:
            raise ValueError(
                f"batch has {rows.shape[0]} channels but earlier batches had {self.n_channels}: "
                "hidden sizes must match"
            )
        return rows

    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch."""
        self._update(self._rows(x))
        self.n_batches += 1

    def _update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def _check_ready(self, spec: QuantSpec) -> None:
        if self.n_batches == 0:
            raise ValueError(f"{type(self).__name__} has seen no data: the calibration set is empty")
        if spec.granularity != self.granularity:
            raise ValueError(
                f"spec.granularity={spec.granularity!r} differs from the observer's {self.granularity!r}"
            )

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(()) if isinstance(self.granularity, PerTensor) else t

    def qparams(self, spec: QuantSpec) -> QParams:
        """Scale (and zero-point) for ``spec``; shape ``()`` per tensor, ``(channels,)`` per channel."""
        self._check_ready(spec)
        lo, hi = self._range()
        if spec.symmetric:
            amax = torch.maximum(lo.abs(), hi.abs()) * spec.clip_ratio
            return QParams(scale=self._shape(amax / spec.qmax))
        if spec.has_offset:
            return QParams(scale=self._shape((hi - lo) / spec.qmax), offset=self._shape(lo))
        lo, hi = lo.clamp(max=0) * spec.clip_ratio, hi.clamp(min=0) * spec.clip_ratio
        scale = (hi - lo) / spec.qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.where(scale > 0, torch.round(-lo / safe).clamp(0, spec.qmax), torch.zeros_like(scale))
        return QParams(scale=self._shape(scale), zero_point=self._shape(zp.to(torch.int32)))

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running minimum and maximum over every batch."""

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.n_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _range(self):
        return self.lo, self.hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """``range ← (1 − momentum)·range + momentum·batch range`` (PyTorch's, momentum 0.01)."""

    def __init__(self, granularity=PerTensor(), momentum: float = 0.01) -> None:
        super().__init__(granularity)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum}: must be in (0, 1]")
        self.momentum = momentum

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.n_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi


class _AbsHistogram(Observer):
    """Per-channel histogram of |x| over [0, R), R doubling (bins merged pairwise) as needed."""

    def __init__(self, granularity=PerTensor(), bins: int = 2048) -> None:
        super().__init__(granularity)
        if bins < 16 or bins % 2:
            raise ValueError(f"bins={bins}: must be an even number ≥ 16")
        self.bins = bins

    def _update(self, rows: torch.Tensor) -> None:
        a = rows.abs()
        amax = float(a.max())
        if self.n_batches == 0:
            self.range = amax if amax > 0 else 1.0
            self.hist = torch.zeros(rows.shape[0], self.bins, dtype=torch.float64)
        while amax >= self.range:  # grow: merge bin pairs, double the range
            merged = self.hist.view(rows.shape[0], self.bins // 2, 2).sum(-1)
            self.hist = torch.cat([merged, torch.zeros_like(merged)], dim=1)
            self.range *= 2
        idx = (a / self.range * self.bins).long().clamp(max=self.bins - 1)  # (C, n)
        flat = idx + torch.arange(rows.shape[0]).unsqueeze(1) * self.bins
        self.hist += torch.bincount(flat.flatten(), minlength=rows.shape[0] * self.bins).view_as(self.hist)

    @property
    def bin_width(self) -> float:
        return self.range / self.bins

    def _threshold(self) -> torch.Tensor:
        raise NotImplementedError

    def qparams(self, spec: QuantSpec) -> QParams:
        self._check_ready(spec)
        if not spec.symmetric:
            raise ValueError(
                f"{type(self).__name__} builds a histogram of |x|: use a symmetric spec "
                "(or MinMaxObserver for asymmetric grids)"
            )
        t = self._threshold(spec).float() * spec.clip_ratio
        return QParams(scale=self._shape(t / spec.qmax))


class PercentileObserver(_AbsHistogram):
    """Clip at the ``percentile``-th percentile of |x| (e.g. 99.99)."""

    def __init__(self, granularity=PerTensor(), percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(granularity, bins)
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile={percentile}: must be in (0, 100]")
        self.percentile = percentile

    def _threshold(self, spec: QuantSpec) -> torch.Tensor:
        cdf = self.hist.cumsum(dim=1) / self.hist.sum(dim=1, keepdim=True)
        first = (cdf < self.percentile / 100 - 1e-12).sum(dim=1)  # first bin reaching the percentile
        return (first.clamp(max=self.bins - 1) + 1).double() * self.bin_width


class MSEObserver(_AbsHistogram):
    """Search ``n_candidates`` clipping thresholds; keep the one with least expected squared error."""

    def __init__(self, granularity=PerTensor(), n_candidates: int = 100, bins: int = 2048) -> None:
        super().__init__(granularity, bins)
        self.n_candidates = n_candidates

    def _threshold(self, spec: QuantSpec) -> torch.Tensor:
        centers = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * self.bin_width  # (bins,)
        amax = (self.hist > 0).double().mul(torch.arange(1, self.bins + 1)).amax(dim=1) * self.bin_width  # (C,)
        best_err = torch.full((self.hist.shape[0],), math.inf, dtype=torch.float64)
        best_t = amax.clone()
        for r in torch.linspace(1.0 / self.n_candidates, 1.0, self.n_candidates, dtype=torch.float64):
            t = (amax * r).unsqueeze(1)  # (C, 1)
            step = t / spec.qmax
            safe = torch.where(step > 0, step, torch.ones_like(step))
            x_hat = torch.minimum(torch.round(centers / safe) * step, t)  # (C, bins)
            err = (self.hist * (x_hat - centers) ** 2).sum(dim=1)
            better = err < best_err
            best_err, best_t = torch.where(better, err, best_err), torch.where(better, t.squeeze(1), best_t)
        return best_t


class EntropyObserver(_AbsHistogram):
    """TensorRT entropy calibration: minimise KL(P ‖ Q) over thresholds (per tensor only)."""

    def __init__(self, granularity=PerTensor(), bins: int = 2048) -> None:
        if not isinstance(granularity, PerTensor):
            raise ValueError("EntropyObserver supports PerTensor() only (one KL search per tensor)")
        super().__init__(granularity, bins)

    def _threshold(self, spec: QuantSpec) -> torch.Tensor:
        hist = self.hist[0].numpy()
        levels = spec.qmax + 1  # 128 for int8: levels of |x| on a symmetric grid
        best_kl, best_i = np.inf, self.bins
        for i in range(levels, self.bins + 1):
            p = hist[:i].copy()
            p[i - 1] += hist[i:].sum()  # clipped mass lands in the last bin
            # Q: merge the first i (unclipped) bins into `levels` chunks of i // levels bins, the
            # remainder joining the last chunk; spread each chunk's mass evenly over the bins
            # where P is non-zero (as NVIDIA pytorch-quantization's _compute_amax_entropy does)
            m = i // levels
            starts = np.arange(levels) * m
            widths = np.full(levels, m)
            widths[-1] = i - starts[-1]
            nonempty = p > 0
            sums = np.add.reduceat(hist[:i], starts)
            counts = np.add.reduceat(nonempty.astype(np.float64), starts)
            q = np.repeat(sums / np.maximum(counts, 1), widths) * nonempty
            mask = p > 0
            if q.sum() == 0 or (q[mask] == 0).any():
                continue  # KL infinite
            pn, qn = p[mask] / p.sum(), q[mask] / q.sum()
            kl = float((pn * np.log(pn / qn)).sum())
            if kl < best_kl:
                best_kl, best_i = kl, i
        return torch.tensor([(best_i + 0.5) * self.bin_width], dtype=torch.float64)


class ObserverGroup:
    """Several observers fed the same batches, e.g. to compare them in one calibration pass."""

    def __init__(self, observers: dict[str, Observer]) -> None:
        if not observers:
            raise ValueError("ObserverGroup needs at least one observer")
        self.observers = observers

    def observe(self, x: torch.Tensor) -> None:
        for obs in self.observers.values():
            obs.observe(x)

    def __getitem__(self, key: str) -> Observer:
        return self.observers[key]
