"""``calibrate``: run a model over sample batches with observers on the inputs of its layers.

Invariants:
  * The model is run in eval mode under ``torch.no_grad`` (modes are restored afterwards); hooks are
    always removed, also when a batch fails.
  * Statistics are collected on the side and attached (``CALIBRATION_ATTR`` on each observed
    layer) only after every batch went through: a failure (no batches, NaN/Inf activations, a
    model error) leaves the model exactly as it was, including statistics of an earlier run.
  * Observed layers: those with a ``quantize_`` handler for the config (exact type), except
    SmoothedLinear wrappers, whose inner linear (seeing the smoothed input) is observed instead.
  * Each observed layer gets a per-tensor observer of the config's kind (SmoothQuant's statistics
    pass also records the exact per-input-channel max |x| of linear layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from fastq.quantization.api import handler_for
from fastq.quantization.observers import Observer

CALIBRATION_ATTR = "_fastq_calibration"


class CalibrationError(ValueError):
    """Calibration cannot run or its statistics cannot serve a config (the message says why)."""


@dataclass
class LayerCalibration:
    """What ``calibrate`` learned about one layer's input."""

    observer: Observer  # per tensor, of the config's kind (``observer.count`` = batches that reached the layer)
    channel_absmax: Optional[Tensor]  # float32 [K]: max |x| per input feature (linear layers, SmoothQuant's pass)
    observer_key: tuple  # the config's observer settings, to check a later quantize_ uses the same

    @property
    def seen(self) -> bool:
        return self.observer.count > 0


def get_calibration(module: nn.Module) -> Optional[LayerCalibration]:
    """The statistics ``calibrate`` attached to ``module`` (None if it was not observed)."""
    return getattr(module, CALIBRATION_ATTR, None)


def _observed_layers(model: nn.Module, config) -> list:
    from fastq.nn.smooth import SmoothedLinear

    return [(name, m) for name, m in model.named_modules()
            if handler_for(m, config) is not None and not isinstance(m, SmoothedLinear)]


def _default_forward(model: nn.Module, batch: Any) -> Any:
    from fastq.distill.trainer import default_forward

    return default_forward(model, batch)


def run_batches(model: nn.Module, batches: Iterable, forward_fn: Optional[Callable], progress: bool,
                what: str) -> int:
    """Run ``forward_fn(model, batch)`` (eval mode, no grad) over ``batches`` with a progress bar;
    returns the batch count (an empty iterable is a CalibrationError)."""
    from tqdm.auto import tqdm

    forward = forward_fn or _default_forward
    total = len(batches) if hasattr(batches, "__len__") else None
    modes = {m: m.training for m in model.modules()}
    count = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in tqdm(batches, total=total, desc=what, disable=not progress, leave=False):
                forward(model, batch)
                count += 1
    finally:
        for m, t in modes.items():
            m.train(t)
    if count == 0:
        raise CalibrationError(f"{what}: batches is empty; pass at least one batch of representative inputs")
    return count


def collect_stats(model: nn.Module, layers: list, batches: Iterable, make_observer: Callable[[], Observer],
                  observer_key: tuple, forward_fn: Optional[Callable], progress: bool,
                  what: str = "calibrate", channel_absmax: bool = False) -> dict:
    """Observe the inputs of ``layers`` [(name, module)] over ``batches``; returns {module: LayerCalibration}
    (with the per-input-feature max |x| of linear layers when ``channel_absmax``).

    Raises CalibrationError naming the layer and batch on NaN/Inf activations, and for no batches."""
    stats = {m: LayerCalibration(make_observer(), None, observer_key) for _, m in layers}
    names = {m: name for name, m in layers}
    state = {"batch": 0}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return
        st = stats[module]
        try:
            st.observer.update(x)
        except ValueError as exc:
            raise CalibrationError(f"{what}: layer {names[module]!r} received NaN or Inf in batch {state['batch']} "
                                   f"({exc}); calibration batches must give finite activations") from None
        if channel_absmax and isinstance(module, nn.Linear) and x.numel():
            a = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float()
            st.channel_absmax = a if st.channel_absmax is None else torch.maximum(st.channel_absmax, a)

    handles = [m.register_forward_pre_hook(hook) for _, m in layers]
    try:
        def counted(model_, batch):
            out = (forward_fn or _default_forward)(model_, batch)
            state["batch"] += 1
            return out

        run_batches(model, batches, counted, progress, what)
    finally:
        for h in handles:
            h.remove()
    return stats


def calibrate(model: nn.Module, batches: Iterable, config, *, forward_fn: Optional[Callable] = None,
              progress: bool = True) -> nn.Module:
    """Run ``model`` over ``batches`` with observers on the inputs of the layers ``config`` quantizes,
    and attach the statistics ``quantize_(model, config)`` needs.

    Args:
        model: the float model (SmoothQuant, when the config asks for it, modifies it in place first).
        batches: an iterable of model inputs (tensor, tuple or mapping; see ``forward_fn``). With
            ``config.smooth_alpha`` set it is iterated twice (a one-shot iterator is read into a list).
        config: a config with calibrated activations, e.g. ``Int8StaticConfig(observer="percentile")``.
        forward_fn: ``forward_fn(model, batch)``; default ``model(batch)`` / ``model(*batch)`` /
            ``model(**batch)``.
        progress: show a tqdm progress bar.

    Returns:
        ``model`` (statistics attached; ``get_calibration(layer)`` reads them).

    Raises:
        CalibrationError: no batches; NaN/Inf activations (naming the layer and batch).
        TypeError: a config without calibrated activations.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate expects an nn.Module, got {type(model).__name__}")
    if not hasattr(config, "make_observer"):
        raise TypeError(f"calibrate: {type(config).__name__} has no calibrated activations; use a config such as "
                        "Int8StaticConfig (Int8DynamicConfig computes its scales at run time)")
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError("forward_fn must be a callable (model, batch) -> output")
    alpha = config.smoothing_alpha()
    if alpha is not None:
        from fastq.quantization.smoothquant import smooth_quant_

        if iter(batches) is batches:
            batches = list(batches)
        smooth_quant_(model, batches, alpha=alpha, forward_fn=forward_fn, progress=progress)
    layers = _observed_layers(model, config)
    if not layers:
        raise CalibrationError(f"calibrate: the model has no layer {type(config).__name__} quantizes "
                               "(nn.Linear / nn.Conv2d)")
    stats = collect_stats(model, layers, batches, config.make_observer, config.observer_key(), forward_fn, progress)
    for module, st in stats.items():
        setattr(module, CALIBRATION_ATTR, st)
    return model
