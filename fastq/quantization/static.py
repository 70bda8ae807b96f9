"""Int8StaticConfig: W8A8 with activation scales calibrated once (``fastq.calibrate``), not per token.

Invariants:
  * Handlers are registered like every config's ((config type, exact module type) in the
    ``quantize_`` registry): nn.Linear -> StaticQuantLinear, nn.Conv2d -> StaticQuantConv2d,
    SmoothedLinear -> StaticQuantLinear with the smoothing fused into the kernel.
  * A layer's activation parameters come from the statistics ``calibrate`` attached to it, through
    the config's observer; a layer without statistics is an error (CalibrationError: the model was
    not calibrated for this config, and ``quantize_`` converts nothing), a layer that saw no data
    during calibration is skipped with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from fastq.nn.smooth import SmoothedLinear
from fastq.nn.static import StaticQuantConv2d, StaticQuantLinear
from fastq.nn._base import UnsupportedLayerError
from fastq.quantization.api import _int8_gemm_layer, register_handler
from fastq.quantization.calibrate import CalibrationError, LayerCalibration, get_calibration
from fastq.quantization.observers import OBSERVERS, make_observer, qparams_from_range
from fastq.quantization.smoothquant import check_alpha

ACT_GRANULARITIES = ("per_tensor", "per_channel")
ONE_SIDED_GAIN = 1.25  # auto symmetry: asymmetric when it resolves the range this much finer


@dataclass(frozen=True)
class Int8StaticConfig:
    """Static W8A8: int8 per-channel weights x activations quantized with calibrated scales.

    Args:
        observer: how the activation range is chosen from the calibration data: "minmax" (the
            exact range), "moving_average" (EMA of per-batch min/max), "percentile" (clip at
            ``percentile`` of |x|), "mse" (minimum expected squared error) or "entropy" (TensorRT's
            KL divergence on a histogram).
        percentile: for "percentile", in (50, 100].
        bins: histogram bins of the histogram observers (percentile, mse, entropy).
        averaging_constant: for "moving_average", in (0, 1].
        act_symmetric: True int8 activations, False uint8 + zero point, None (default) chooses per
            layer: asymmetric when the calibrated range is one-sided (after ReLU/GELU) so that the
            zero point buys at least 1.25x finer steps.
        act_granularity: "per_tensor" (one scale), or "per_channel": every input channel's range
            folded into the weights (SmoothQuant with alpha = 1; linear layers).
        smooth_alpha: run SmoothQuant with this strength in [0, 1] inside ``calibrate`` (None: off).
    """

    observer: str = "percentile"
    percentile: float = 99.99
    bins: int = 2048
    averaging_constant: float = 0.01
    act_symmetric: Optional[bool] = None
    act_granularity: str = "per_tensor"
    smooth_alpha: Optional[float] = None

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise ValueError(f"Int8StaticConfig.observer {self.observer!r} is not one of {OBSERVERS}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 50 < p <= 100:
            raise ValueError(f"Int8StaticConfig.percentile must be in (50, 100], got {p!r}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 64 or self.bins % 2:
            raise ValueError(f"Int8StaticConfig.bins must be an even int >= 64, got {self.bins!r}")
        c = self.averaging_constant
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"Int8StaticConfig.averaging_constant must be in (0, 1], got {c!r}")
        if self.act_symmetric is not None and not isinstance(self.act_symmetric, bool):
            raise TypeError(f"Int8StaticConfig.act_symmetric must be True, False or None (auto), got "
                            f"{self.act_symmetric!r}")
        if self.act_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"Int8StaticConfig.act_granularity {self.act_granularity!r} is not one of "
                             f"{ACT_GRANULARITIES}")
        if self.smooth_alpha is not None:
            check_alpha(self.smooth_alpha)
            if self.act_granularity == "per_channel":
                raise ValueError("act_granularity='per_channel' is SmoothQuant with alpha=1; do not also pass "
                                 "smooth_alpha")

    # ---- what calibrate asks of a config ----
    def make_observer(self):
        kwargs = {"percentile": {"percentile": self.percentile}, "moving_average":
                  {"averaging_constant": self.averaging_constant}}.get(self.observer, {})
        if self.observer in ("percentile", "mse", "entropy"):
            kwargs["bins"] = self.bins
        return make_observer(self.observer, **kwargs)

    def observer_key(self) -> tuple:
        return (self.observer, self.percentile if self.observer == "percentile" else None,
                self.bins if self.observer in ("percentile", "mse", "entropy") else None,
                self.averaging_constant if self.observer == "moving_average" else None)

    def smoothing_alpha(self) -> Optional[float]:
        return 1.0 if self.act_granularity == "per_channel" else self.smooth_alpha


def activation_qparams(stats: LayerCalibration, config: Int8StaticConfig):
    """(scale [1], zero_point [1] or None) of a layer from its calibration statistics."""
    lo, hi = stats.observer.clip_range(True)
    symmetric = config.act_symmetric
    lo_a, hi_a = stats.observer.clip_range(False)
    if symmetric is None:  # one-sided ranges: the zero point makes the steps finer
        amax = float(torch.maximum(lo.abs(), hi.abs()))
        symmetric = not (amax > 0 and 2 * amax / max(float(hi_a - lo_a), 1e-30) >= ONE_SIDED_GAIN)
    scale, zp = qparams_from_range(*((lo, hi) if symmetric else (lo_a, hi_a)), symmetric)
    return scale.reshape(1), None if zp is None else zp.reshape(1)


def _stats(module: nn.Module, config: Int8StaticConfig) -> LayerCalibration:
    what = f"{type(module).__name__}({module.extra_repr()})"
    stats = get_calibration(module)
    if stats is None:
        raise CalibrationError(f"{what} has no calibration statistics: run fastq.calibrate(model, batches, config) "
                               "with this Int8StaticConfig before quantize_ (nothing was converted)")
    if stats.observer_key != config.observer_key():
        raise CalibrationError(f"{what} was calibrated with observer settings {stats.observer_key} but the config "
                               f"asks for {config.observer_key()}; calibrate again with this config "
                               "(nothing was converted)")
    if not stats.seen:
        raise UnsupportedLayerError("it received no data during calibration")
    return stats


def _linear(module: nn.Linear, config: Int8StaticConfig) -> StaticQuantLinear:
    return StaticQuantLinear.from_float(module, *activation_qparams(_stats(module, config), config))


def _smoothed(module: SmoothedLinear, config: Int8StaticConfig) -> StaticQuantLinear:
    if type(module.linear) is not nn.Linear:
        raise UnsupportedLayerError(f"its inner layer is a {type(module.linear).__name__}, not an nn.Linear")
    stats = _stats(module.linear, config)
    return StaticQuantLinear.from_float(module.linear, *activation_qparams(stats, config), smooth=module.smooth)


def _conv(module: nn.Conv2d, config: Int8StaticConfig) -> StaticQuantConv2d:
    return StaticQuantConv2d.from_float(module, *activation_qparams(_stats(module, config), config))


register_handler(Int8StaticConfig, nn.Linear, _int8_gemm_layer(_linear))
register_handler(Int8StaticConfig, SmoothedLinear, _int8_gemm_layer(_smoothed))
register_handler(Int8StaticConfig, nn.Conv2d, _int8_gemm_layer(_conv))
