"""Observers: running statistics of a stream of tensors that choose an int8 quantization range.

Invariants:
  * ``update(x)`` folds one tensor in (float32 math; x is never modified). A NaN or +-Inf in x
    raises ``ValueError`` and leaves the observer as it was, so calibration can name the layer.
  * ``ch_axis=None`` keeps one statistic for the whole tensor (per tensor); an int keeps one per
    index of that axis (per channel), e.g. -1 for the input features of a linear layer.
  * ``clip_range(symmetric)`` returns float32 ``(lo, hi)`` (0-d per tensor, [C] per channel) with
    ``lo <= 0 <= hi``; ``qparams`` turns it into ``(scale, zero_point)`` with exactly the formulas
    of dynamic ``quantize_int8`` (``fastq/ops/reference.py``), so a static scale computed from the
    same range is the dynamic scale bit for bit.
  * Histogram observers keep ``bins`` counts over [-R, R] per channel; when a new value exceeds R,
    R grows by a power of two and old bins merge exactly (each old bin falls in one new bin), so
    the result does not depend on how the data was split into batches, up to bin resolution.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from fastq.ops._checks import FLT_MIN

OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "entropy")


def qparams_from_range(lo: Tensor, hi: Tensor, symmetric: bool) -> tuple[Tensor, Optional[Tensor]]:
    """(scale float32, zero_point int32 or None) of a range, as dynamic ``quantize_int8`` computes them:
    symmetric ``scale = max(max(|lo|, |hi|) / 127, FLT_MIN)``; asymmetric ``lo = min(lo, 0)``,
    ``hi = max(hi, 0)``, ``scale = max((hi - lo) / 255, FLT_MIN)``, ``zp = clamp(round(-lo * (1 / scale)), 0, 255)``."""
    lo, hi = lo.float(), hi.float()
    if symmetric:
        return torch.clamp_min(torch.maximum(lo.abs(), hi.abs()) / 127, FLT_MIN), None
    lo, hi = lo.clamp_max(0), hi.clamp_min(0)
    scale = torch.clamp_min((hi - lo) / 255, FLT_MIN)
    zp = torch.clamp(torch.round(-lo * (1.0 / scale)), 0, 255).to(torch.int32)
    return scale, zp


class Observer:
    """Base: exact running min / max per tensor or per channel; subclasses choose the clipping."""

    name = "minmax"

    def __init__(self, ch_axis: Optional[int] = None) -> None:
        if ch_axis is not None and (isinstance(ch_axis, bool) or not isinstance(ch_axis, int)):
            raise TypeError(f"ch_axis must be None (per tensor) or an int axis, got {ch_axis!r}")
        self.ch_axis = ch_axis
        self.min: Optional[Tensor] = None
        self.max: Optional[Tensor] = None
        self.count = 0  # tensors seen

    def _rows(self, x: Tensor) -> Tensor:
        """float32 [C, N] view of x: one row per channel (C = 1 per tensor)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"observers take float tensors, got {x.dtype if isinstance(x, Tensor) else type(x)}")
        x = x.detach().float()
        if self.ch_axis is None:
            return x.reshape(1, -1)
        if x.dim() == 0:
            raise ValueError("a per-channel observer needs a tensor of rank >= 1")
        return x.movedim(self.ch_axis, 0).reshape(x.shape[self.ch_axis], -1)

    def update(self, x: Tensor) -> None:
        rows = self._rows(x)
        if rows.shape[1] == 0:
            return
        mn, mx = torch.aminmax(rows, dim=1)
        if not (bool(torch.isfinite(mn).all()) and bool(torch.isfinite(mx).all())):
            raise ValueError("the tensor holds NaN or Inf values; calibration data must be finite")
        if self.min is not None and self.min.shape != mn.shape:
            raise ValueError(f"channel count changed from {self.min.numel()} to {mn.numel()} between updates")
        self._fold(rows, mn, mx)
        self.count += 1

    def _fold(self, rows: Tensor, mn: Tensor, mx: Tensor) -> None:
        self.min = mn if self.min is None else torch.minimum(self.min, mn)
        self.max = mx if self.max is None else torch.maximum(self.max, mx)

    def _check_seen(self) -> None:
        if self.count == 0:
            raise ValueError(f"the {self.name} observer saw no data")

    def _out(self, t: Tensor) -> Tensor:
        return t.reshape(()) if self.ch_axis is None else t

    def clip_range(self, symmetric: bool = True) -> tuple[Tensor, Tensor]:
        """(lo, hi) float32: 0-d per tensor, [C] per channel; lo <= 0 <= hi."""
        self._check_seen()
        return self._out(self.min.clamp_max(0)), self._out(self.max.clamp_min(0))

    def absmax(self) -> Tensor:
        """max |x| seen (exact), 0-d or [C]."""
        self._check_seen()
        return self._out(torch.maximum(self.min.abs(), self.max.abs()))

    def qparams(self, symmetric: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """(scale, zero_point) of ``clip_range``; see ``qparams_from_range``."""
        return qparams_from_range(*self.clip_range(symmetric), symmetric)


class MinMaxObserver(Observer):
    """The exact range seen: no clipping (outliers set the scale)."""


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each tensor's min and max (torch.ao's default for activations):
    ``avg = avg + c * (batch - avg)``, starting from the first tensor's."""

    name = "moving_average"

    def __init__(self, ch_axis: Optional[int] = None, averaging_constant: float = 0.01) -> None:
        super().__init__(ch_axis)
        if not (0 < averaging_constant <= 1):
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.c = float(averaging_constant)
        self.avg_min: Optional[Tensor] = None
        self.avg_max: Optional[Tensor] = None

    def _fold(self, rows: Tensor, mn: Tensor, mx: Tensor) -> None:
        super()._fold(rows, mn, mx)
        if self.avg_min is None:
            self.avg_min, self.avg_max = mn, mx
        else:
            self.avg_min = self.avg_min + self.c * (mn - self.avg_min)
            self.avg_max = self.avg_max + self.c * (mx - self.avg_max)

    def clip_range(self, symmetric: bool = True) -> tuple[Tensor, Tensor]:
        self._check_seen()
        return self._out(self.avg_min.clamp_max(0)), self._out(self.avg_max.clamp_min(0))


class HistogramObserver(Observer):
    """Counts per channel in ``bins`` equal bins over [-R, R] (R grows by powers of two as needed)."""

    name = "histogram"

    def __init__(self, ch_axis: Optional[int] = None, bins: int = 2048) -> None:
        super().__init__(ch_axis)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 64 or bins % 2:
            raise ValueError(f"bins must be an even int >= 64, got {bins!r}")
        self.bins = bins
        self.hist: Optional[Tensor] = None  # float64 [C, bins]
        self.radius: Optional[Tensor] = None  # float64 [C]

    def _fold(self, rows: Tensor, mn: Tensor, mx: Tensor) -> None:
        super()._fold(rows, mn, mx)
        amax = torch.maximum(mn.abs(), mx.abs()).double()
        c, b = rows.shape[0], self.bins
        if self.hist is None:
            self.radius = amax.clamp_min(1e-30)
            self.hist = torch.zeros(c, b, dtype=torch.float64, device=rows.device)
        elif bool((amax > self.radius).any()):
            self._grow(amax)
        if c == 1:  # per tensor: one histc pass (bin edges within float32 rounding of the exact ones)
            r = float(self.radius)
            self.hist[0] += torch.histc(rows.reshape(-1), bins=b, min=-r, max=r).to(torch.float64)
            return
        width = (2 * self.radius / b).to(rows.device)
        idx = torch.floor((rows.double() + self.radius[:, None]) / width[:, None]).clamp_(0, b - 1).long()
        idx += torch.arange(c, device=rows.device)[:, None] * b
        self.hist += torch.bincount(idx.reshape(-1), minlength=c * b).reshape(c, b).to(torch.float64)

    def _grow(self, amax: Tensor) -> None:
        b = self.bins
        ratio = (amax / self.radius).clamp_min(1.0)
        log2f = torch.ceil(torch.log2(ratio)).clamp_min(0)
        far = ratio > b  # old data collapses next to 0: keep its sign, take R = amax exactly
        f = torch.where(far, torch.ones_like(log2f), torch.exp2(log2f)).long()  # merge factor per channel
        i = torch.arange(b, device=self.hist.device)
        new_idx = ((f[:, None] - 1) * (b // 2) + i[None, :]) // f[:, None]
        new_idx = torch.where(far[:, None], torch.where(i < b // 2, b // 2 - 1, b // 2).expand_as(new_idx), new_idx)
        merged = torch.zeros_like(self.hist).scatter_add_(1, new_idx, self.hist)
        self.hist = merged
        self.radius = torch.where(far, amax, self.radius * f.double())

    # ---- helpers over the histogram ----
    def _abs_hist(self) -> tuple[Tensor, Tensor]:
        """|x| counts [C, bins/2] (bin j covers [j w, (j + 1) w)) and the bin width w [C]."""
        h = self.hist
        half = self.bins // 2
        return h[:, half:] + h[:, :half].flip(1), 2 * self.radius / self.bins

    def _centers(self) -> Tensor:
        """Signed bin centers [C, bins]."""
        w = 2 * self.radius / self.bins
        j = torch.arange(self.bins, dtype=torch.float64, device=self.hist.device)
        return -self.radius[:, None] + (j + 0.5)[None, :] * w[:, None]

    def _finish(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Clip to the observed range (a histogram edge may overshoot it), float32, lo <= 0 <= hi."""
        lo = torch.maximum(lo.float(), self.min).clamp_max(0)
        hi = torch.minimum(hi.float(), self.max).clamp_min(0)
        return self._out(lo), self._out(hi)


def _quantile(counts: Tensor, width: Tensor, origin: Tensor, q: float) -> Tensor:
    """Per row: the value below which a fraction q of the counts lies (linear within a bin)."""
    cum = counts.cumsum(1)
    target = q * cum[:, -1:]
    j = torch.searchsorted(cum, target).clamp_max(counts.shape[1] - 1)  # first bin reaching the target
    below = torch.where(j > 0, cum.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(target))
    inside = counts.gather(1, j).clamp_min(1e-300)
    frac = ((target - below) / inside).clamp(0, 1)
    return (origin[:, None] + (j.double() + frac) * width[:, None]).squeeze(1)


class PercentileObserver(HistogramObserver):
    """Clip at a percentile of |x| (symmetric) or at the (100 - p) and p percentiles of x (asymmetric)."""

    name = "percentile"

    def __init__(self, ch_axis: Optional[int] = None, bins: int = 2048, percentile: float = 99.99) -> None:
        super().__init__(ch_axis, bins)
        if not (50 < percentile <= 100):
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def clip_range(self, symmetric: bool = True) -> tuple[Tensor, Tensor]:
        self._check_seen()
        p = self.percentile / 100
        if symmetric:
            a, w = self._abs_hist()
            t = _quantile(a, w, torch.zeros_like(w), p)
            return self._finish(-t, t)
        w = 2 * self.radius / self.bins
        lo = _quantile(self.hist, w, -self.radius, 1 - p)
        hi = _quantile(self.hist, w, -self.radius, p)
        return self._finish(lo, hi)


class MSEObserver(HistogramObserver):
    """The clipping that minimises the expected squared quantization error over the histogram:
    values inside the range cost ``scale^2 / 12`` (uniform rounding error), values outside cost
    their squared distance to the clip. Candidates: ``candidates`` fractions of the observed range
    (both ends scaled together when asymmetric)."""

    name = "mse"

    def __init__(self, ch_axis: Optional[int] = None, bins: int = 2048, candidates: int = 200) -> None:
        super().__init__(ch_axis, bins)
        self.candidates = int(candidates)

    def clip_range(self, symmetric: bool = True) -> tuple[Tensor, Tensor]:
        self._check_seen()
        r = torch.arange(1, self.candidates + 1, dtype=torch.float64, device=self.hist.device) / self.candidates  # [R]
        lo_all = self.min.double().clamp_max(0)
        hi_all = self.max.double().clamp_min(0)
        c = self._centers()  # [C, B]
        if symmetric:
            amax = torch.maximum(-lo_all, hi_all)
            lo_c, hi_c = -(amax[:, None] * r), amax[:, None] * r  # [C, R]
            levels = 254.0
        else:
            lo_c, hi_c = lo_all[:, None] * r, hi_all[:, None] * r
            levels = 255.0
        best = []
        chunk = max(1, (1 << 24) // (self.candidates * self.bins))  # bound the [chunk, R, B] temporaries
        for c0 in range(0, c.shape[0], chunk):
            lo, hi = lo_c[c0:c0 + chunk, :, None], hi_c[c0:c0 + chunk, :, None]
            cc, n = c[c0:c0 + chunk, None, :], self.hist[c0:c0 + chunk, None, :]
            step = (hi - lo) / levels
            err = torch.where(cc < lo, (lo - cc) ** 2, torch.where(cc > hi, (cc - hi) ** 2, step ** 2 / 12))
            best.append(torch.argmin((err * n).sum(2), dim=1))
        k = torch.cat(best)[:, None]
        return self._finish(lo_c.gather(1, k).squeeze(1), hi_c.gather(1, k).squeeze(1))


class EntropyObserver(HistogramObserver):
    """TensorRT's entropy calibration: the |x| threshold whose ``levels``-bin quantized histogram is
    closest (KL divergence) to the clipped original; levels = 128 symmetric, 256 asymmetric (codes
    spent on the larger side). The asymmetric range is [max(min, -t), min(max, t)]."""

    name = "entropy"

    def clip_range(self, symmetric: bool = True) -> tuple[Tensor, Tensor]:
        self._check_seen()
        a, w = self._abs_hist()
        levels = 128 if symmetric else 256
        t = torch.tensor([_kl_threshold(a[ch], levels) for ch in range(a.shape[0])], dtype=torch.float64,
                         device=w.device) * w
        return self._finish(-t, t)


def _kl_threshold(hist: Tensor, levels: int) -> float:
    """Number of |x| bins to keep (a threshold in bin widths) minimising KL(P || Q) (TensorRT)."""
    nb = hist.numel()
    if nb <= levels or float(hist.sum()) == 0:
        return float(nb)
    eps = 1e-12
    step = max(1, (nb - levels) // 256)  # ~256 candidate thresholds
    best, best_i = math.inf, nb
    suffix = hist.flip(0).cumsum(0).flip(0)  # suffix[i] = sum(hist[i:])
    for i in list(range(levels, nb, step)) + [nb]:
        p = hist[:i].clone()
        if i < nb:
            p[-1] += suffix[i]
        nonzero = (hist[:i] > 0).double()
        group = torch.div(torch.arange(i, device=hist.device) * levels, i, rounding_mode="floor")  # bin -> quantized level
        qsum = hist.new_zeros(levels).index_add_(0, group, hist[:i])
        qcnt = hist.new_zeros(levels).index_add_(0, group, nonzero)
        q = nonzero * (qsum / qcnt.clamp_min(1))[group]
        p = p / p.sum()
        q = q / q.sum().clamp_min(eps)
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp_min(eps))).sum())
        if kl < best:
            best, best_i = kl, i
    return float(best_i)


_OBSERVER_TYPES = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
                   "percentile": PercentileObserver, "mse": MSEObserver, "entropy": EntropyObserver}


def make_observer(name: str, ch_axis: Optional[int] = None, **kwargs) -> Observer:
    """An observer by name (``OBSERVERS``); kwargs go to its constructor (e.g. ``percentile=99.9``)."""
    if name not in _OBSERVER_TYPES:
        raise ValueError(f"unknown observer {name!r}; use one of {OBSERVERS}")
    return _OBSERVER_TYPES[name](ch_axis=ch_axis, **kwargs)
