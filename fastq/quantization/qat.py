"""Quantization-aware training: ``prepare_qat_`` -> train (any loop, ``fastq.distill_``) -> ``convert_``.

Invariants:
  * ``prepare_qat_`` swaps nn.Linear / nn.Conv2d (exact types) for QATLinear / QATConv2d, which
    subclass them: the float ``weight`` / ``bias`` Parameters stay where they were (optimizers,
    state_dict names, ``distill_`` all keep working).
  * Forward value = the real fastq module the config builds from the current weights (its
    ``quantize_`` handler, run under no_grad): the integer kernel itself, so ``convert_`` gives
    bit-identical outputs for every config (same kernel, same inputs). Gradients come from a
    straight-through-estimator graph: ``F.linear(fake_act(x), fake_weight(w), bias)``, whose
    fake quantizers round with the same formulas as the kernels (round half to even of
    ``x * (1 / scale)``, clamp, optional zero point). Clipped values get no gradient; learnable
    (LSQ) scales get LSQ's gradient, scaled by ``1 / sqrt(numel * q_max)``.
  * Sub-8-bit weights (IntxWeightOnlyConfig, Int4WeightOnlyConfig, Int4DynamicConfig) fake-quantize
    with ``intx_quantize``'s own grid functions (``_qparams`` / ``_codes``: ``w / scale``, a
    division, round half to even, clamp, zero point), so the STE value equals the real module's
    dequantized weight. These configs take nn.Linear only: Conv2d layers stay float with a note.
    ``clip`` is searched once, at ``prepare_qat_``, per group on the initial weights; the ratio is
    then fixed (buffer ``weight_clip_ratio``) and scales follow the trained weights times it (a
    re-search every step would cost 21 quantizations per layer and make the grid jump).
    ``gptq=True`` is refused: its codes come from a one-shot Hessian solve, not from rounding, so
    no straight-through gradient describes them.
  * Codebook configs (fastq.quantization.codebook; nn.Linear and nn.Conv2d, as quantize_) never
    re-implement their encoder: the STE graph's weight is ``codebook_weight`` of ``encode``'s own
    codes, tables and scales, so it equals the converted module's ``dequantized_weight`` bit for bit.
    - BinaryConfig / TernaryConfig / PowerOfTwoConfig re-encode the current float weight at every
      forward (sign and alpha = mean |W|; TWN's threshold and alpha; the per-row power-of-two range):
      the definitions hold at every step, and nothing extra is stored. The gradient is the plain
      straight-through one (dL/dW = dL/dW_q, BinaryConnect / TWN), not the derivative of alpha or
      the threshold: those are statistics of the whole row that the encoder recomputes anyway.
    - WeightSharingConfig clusters once, at ``prepare_qat_`` (the same k-means, scope, init, seed
      and fixed 0.0 entry for pruned weights as quantize_), then keeps the assignment (buffer
      ``weight_codes`` uint8 [N, K]) and trains the shared values (Parameter ``weight_codebook``
      [R, G, 2**bits]): the gradient of a centroid is the sum of its members' gradients (Deep
      Compression's fine-tuning, as ``train_centroids_``). Re-clustering at every step would cost
      a k-means per layer per step (seconds for exact per-row tables) and let codes jump between
      steps; a fixed assignment is what the config's encoding means. The float ``weight`` is not
      used after prepare_qat_ (it gets no gradient); a fixed 0.0 entry stays exactly 0 (it is
      rebuilt as 0, so no optimizer or weight decay moves it).
    - ``lsq=True`` is refused (ValueError): none of them has a free scale to learn (binary /
      ternary: mean |W| by definition; power of two: a power of two per row; weight sharing: the
      centroids themselves are trained).
  * The hook for other configs is ``register_qat(ConfigType, SchemeClass)``: a ``QATScheme``
    subclass supplies ``fake_weight`` (and ``fake_act`` when activations are quantized); its
    ``build`` defaults to the config's registered ``quantize_`` handler, so the exact forward and
    ``convert_`` come for free.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastq.nn._base import UnsupportedLayerError
from fastq.nn.conv import ConvGeometry
from fastq.ops import PER_ROW, quantize_int8
from fastq.ops._checks import FLT_MIN
from fastq.quantization.api import SKIP_ATTR, _check_skip, _skipped_by_name, handler_for
from fastq.quantization.calibrate import CalibrationError, get_calibration
from fastq.quantization.configs import (Int4DynamicConfig, Int4WeightOnlyConfig, Int8DynamicConfig,
                                        Int8WeightOnlyConfig, IntxWeightOnlyConfig)

_SCHEMES: dict = {}  # config type -> QATScheme subclass


# ---- straight-through building blocks -----------------------------------------------------------

def round_ste(v: Tensor) -> Tensor:
    """round half to even in the forward pass, identity gradient (value exactly ``torch.round(v)``)."""
    return v + (torch.round(v) - v).detach()


class _GradScale(torch.autograd.Function):
    """Identity forward (same value); gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx, t: Tensor, g: float) -> Tensor:
        ctx.g = g
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.g, None


class _ExactForward(torch.autograd.Function):
    """Value of ``exact``, gradient of ``ste``: the kernel's result with the STE graph's gradients."""

    @staticmethod
    def forward(ctx, ste: Tensor, exact: Tensor) -> Tensor:
        return exact.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def fake_quant(x: Tensor, scale: Tensor, zero_point: Optional[Tensor], qmin: int, qmax: int) -> Tensor:
    """``(clamp(round(x * (1 / scale)) + zp, qmin, qmax) - zp) * scale`` with STE rounding; scale
    broadcasts against x. Gradients: x where not clipped; scale as LSQ."""
    v = x * (1.0 / scale)
    q = round_ste(v)
    if zero_point is not None:
        q = q + zero_point
    q = torch.clamp(q, qmin, qmax)
    if zero_point is not None:
        q = q - zero_point
    return q * scale


def fake_act_per_token(x: Tensor, symmetric: bool) -> Tensor:
    """Dynamic per-token int8 activations as ``quantize_int8(x, PER_ROW, symmetric)`` rounds them
    (scales from each row, not learned): [-127, 127], or [0, 255] with a zero point."""
    _, scale, zp = quantize_int8(x.detach(), PER_ROW, symmetric)
    if symmetric:
        return fake_quant(x, scale, None, -127, 127)
    return fake_quant(x, scale, zp.float(), 0, 255)


def fake_intx(w3: Tensor, scale: Tensor, zero: Optional[Tensor], bits: int) -> Tensor:
    """Groups ``w3`` [N, G, gs] through ``intx_quantize``'s grid with STE rounding; ``scale`` and
    ``zero`` (float, integral values) are [N, G]. Symmetric (``zero`` None):
    ``clamp(round(w / s), -2^(b-1), 2^(b-1) - 1) * s``; asymmetric:
    ``(clamp(round(w / s) + z, 0, 2^b - 1) - z) * s``. A division, as ``intx_quantize`` does (not a
    multiply by ``1 / s``): the values equal ``intx_dequantize`` of its codes bit for bit."""
    s = scale.unsqueeze(-1)
    q = round_ste(w3 / s)
    if zero is None:
        half = 1 << (bits - 1)
        return torch.clamp(q, -half, half - 1) * s
    z = zero.unsqueeze(-1)
    return (torch.clamp(q + z, 0, (1 << bits) - 1) - z) * s


def _lsq(scale: Tensor, numel: int, qmax: int) -> Tensor:
    return _GradScale.apply(scale.clamp_min(FLT_MIN), 1.0 / math.sqrt(max(numel, 1) * qmax))


# ---- schemes ------------------------------------------------------------------------------------

class QATScheme:
    """How one config's kernels round, for training. Subclass per config and ``register_qat`` it.

    ``setup`` adds parameters/buffers to the QAT module (e.g. learnable scales); ``fake_weight``
    maps the float [N, K] weight to its fake-quantized value (STE); ``fake_act`` does the same for
    [M, K] activations (identity for weight-only configs); ``build`` returns the real fastq module
    for a float twin of the layer (sharing its weight) and must raise UnsupportedLayerError for
    layers the config cannot take.
    """

    def __init__(self, config, lsq: bool = False) -> None:
        self.config, self.lsq = config, lsq

    def setup(self, module: nn.Module) -> None:
        pass

    def fake_weight(self, module: nn.Module, w: Tensor) -> Tensor:
        raise NotImplementedError

    def fake_act(self, module: nn.Module, x: Tensor) -> Tensor:
        return x

    def build(self, module: nn.Module, twin: nn.Module) -> nn.Module:
        handler = handler_for(twin, self.config)
        if handler is None:
            raise UnsupportedLayerError(f"{type(self.config).__name__} has no quantize_ handler for "
                                        f"{type(twin).__name__}")
        return handler(twin, self.config)


class Int8WeightScheme(QATScheme):
    """Symmetric int8 weights per output channel (or per group along K): scale = amax / 127, or a
    learnable LSQ scale initialised there (``weight_scale_lsq`` [N, G])."""

    group_size: Optional[int] = None

    def setup(self, module: nn.Module) -> None:
        k = _weight2d(module).shape[1]
        if self.group_size is not None and k % self.group_size:
            raise UnsupportedLayerError(f"group_size {self.group_size} does not divide K={k}")
        if self.lsq:
            _, scale, _ = quantize_int8(_weight2d(module).detach(), self._groups(), True)
            module.weight_scale_lsq = nn.Parameter(scale.reshape(module.weight.shape[0], -1).clone())

    def _groups(self) -> int:
        return PER_ROW if self.group_size is None else self.group_size

    def _scale(self, module: nn.Module, w: Tensor) -> Tensor:
        n = w.shape[0]
        if self.lsq:
            return _lsq(module.weight_scale_lsq, w.numel(), 127)
        return quantize_int8(w.detach(), self._groups(), True)[1].reshape(n, -1)

    def fake_weight(self, module: nn.Module, w: Tensor) -> Tensor:
        n, k = w.shape
        s = self._scale(module, w)
        return fake_quant(w.reshape(n, s.shape[1], -1), s.unsqueeze(-1), None, -127, 127).reshape(n, k)

    def build(self, module: nn.Module, twin: nn.Module) -> nn.Module:
        return self._learned_weights(module, super().build(module, twin))

    def _learned_weights(self, module: nn.Module, q: nn.Module) -> nn.Module:
        """With LSQ, re-pack q's weight from the learned scales (quantize_int8 with static scales:
        the formula fake_weight uses)."""
        if self.lsq:
            w = _weight2d(module).detach()
            scale = module.weight_scale_lsq.detach().clamp_min(FLT_MIN).reshape(w.shape[0], -1)
            codes, _, _ = quantize_int8(w, self._groups(), True, scale=scale)
            q.weight_packed = torch.ops.fastq.int8_pack_weight(codes)
            q.weight_scale = scale.reshape(q.weight_scale.shape).clone()
        return q


class Int8WeightOnlyScheme(Int8WeightScheme):
    def __init__(self, config: Int8WeightOnlyConfig, lsq: bool = False) -> None:
        super().__init__(config, lsq)
        self.group_size = config.group_size


class Int8DynamicScheme(Int8WeightScheme):
    """W8A8 with per-token activation scales computed from each row (not learned)."""

    def fake_act(self, module: nn.Module, x: Tensor) -> Tensor:
        return fake_act_per_token(x, self.config.act_symmetric)


class Int8StaticScheme(Int8WeightScheme):
    """Static W8A8: one activation scale (and zero point) per layer, from ``calibrate`` when the layer
    was calibrated, else observed during training forwards with the config's observer; learnable
    (LSQ) when ``lsq``. The symmetry is fixed when the range is first known."""

    def setup(self, module: nn.Module) -> None:
        super().setup(module)
        module.register_buffer("act_zero_point", torch.zeros(1, dtype=torch.int32, device=module.weight.device))
        scale = torch.full((1,), float("nan"), device=module.weight.device)
        if self.lsq:
            module.act_scale = nn.Parameter(scale)
        else:
            module.register_buffer("act_scale", scale)
        module.act_symmetric = None
        stats = get_calibration(module)
        if stats is not None and stats.observer_key == self.config.observer_key() and stats.seen:
            module.act_observer = None
            self._set_range(module, stats)
        else:
            module.act_observer = self.config.make_observer()

    def _set_range(self, module: nn.Module, stats) -> None:
        from fastq.quantization.static import activation_qparams

        scale, zp = activation_qparams(stats, self.config)
        module.act_symmetric = zp is None
        with torch.no_grad():
            module.act_scale.copy_(scale)
            module.act_zero_point.fill_(0 if zp is None else int(zp))

    def _observe(self, module: nn.Module, x: Tensor) -> None:
        if module.act_observer is not None and module.training:
            from fastq.quantization.calibrate import LayerCalibration

            module.act_observer.update(x)
            self._set_range(module, LayerCalibration(module.act_observer, None, self.config.observer_key()))
            if self.lsq:
                module.act_observer = None  # a learnable scale: the first observed range only initialises it
        if module.act_symmetric is None:
            raise CalibrationError(f"{type(module).__name__}: no activation range yet; run fastq.calibrate before "
                                   "prepare_qat_, or a training-mode forward first (the layer observes its inputs)")

    def _act_params(self, module: nn.Module, x: Tensor) -> tuple:
        zp = None if module.act_symmetric else module.act_zero_point
        scale = _lsq(module.act_scale, x.numel(), 127 if zp is None else 255) if self.lsq else module.act_scale
        return scale, zp

    def fake_act(self, module: nn.Module, x: Tensor) -> Tensor:
        scale, zp = self._act_params(module, x)
        if zp is None:
            return fake_quant(x, scale, None, -127, 127)
        return fake_quant(x, scale, zp.float(), 0, 255)

    def build(self, module: nn.Module, twin: nn.Module) -> nn.Module:
        from fastq.nn.static import StaticQuantConv2d, StaticQuantLinear
        from fastq.quantization.api import _int8_gemm_layer

        scale = module.act_scale.detach().clamp_min(FLT_MIN) if not bool(torch.isnan(module.act_scale).any()) \
            else torch.ones(1, device=module.weight.device)  # placeholder until the range is known
        zp = None if module.act_symmetric in (None, True) else module.act_zero_point
        cls = StaticQuantLinear if isinstance(twin, nn.Linear) else StaticQuantConv2d
        q = _int8_gemm_layer(lambda m, _: cls.from_float(m, scale, zp))(twin, self.config)
        return self._learned_weights(module, q)


class IntxWeightScheme(QATScheme):
    """``bits``-bit weights (2..8) per group of the layer's group size (``fit_group_size`` applied as
    ``quantize_`` does) or per channel, symmetric or with zero points, rounded as ``intx_quantize``.

    Without LSQ the scale (and zero point) follow the current weights: ``_qparams`` at the fixed clip
    ratio ``weight_clip_ratio`` [N, G] (ones without ``clip``). With LSQ the scale is the Parameter
    ``weight_scale_lsq`` [N, G], initialised there; asymmetric zero points are then
    ``clamp(round(-r * min(min w, 0) / s), 0, 2^b - 1)`` from the current weights (no gradient), which
    is ``intx_quantize``'s zero point at initialisation. ``build`` packs the codes of that same grid.
    """

    def __init__(self, config, lsq: bool = False) -> None:
        super().__init__(config, lsq)
        if config.gptq:
            raise ValueError(f"prepare_qat_: {type(config).__name__}(gptq=True) cannot be trained: GPTQ chooses codes "
                             "with a one-shot Hessian solve that no straight-through gradient follows; pass gptq=False "
                             "(QAT learns the rounding itself)")
        self.bits, self.symmetric = config.bits, config.symmetric
        self.group_size: Optional[int] = None  # this layer's, set by setup
        self.clip: Optional[str] = None  # the clip mode the ratio was searched with

    def setup(self, module: nn.Module) -> None:
        from fastq.nn.intx import _group_for
        from fastq.quantization.intx import _qparams, _search, input_stats

        twin = module._twin()
        if handler_for(twin, self.config) is None:
            raise UnsupportedLayerError(f"{type(self.config).__name__} has no quantize_ handler for "
                                        f"{type(twin).__name__} "
                                        "(sub-8-bit weight configs take nn.Linear)")
        w = _weight2d(module).detach().float()
        n, k = w.shape
        self.group_size, _ = _group_for(k, self.config)
        gs = k if self.group_size is None else self.group_size
        if k % gs:
            raise UnsupportedLayerError(f"group_size {gs} does not divide K={k}")
        if not bool(torch.isfinite(w).all()):
            raise UnsupportedLayerError("the weight holds NaN or Inf values")
        g = w.reshape(n, k // gs, gs)
        ratio = torch.ones(n, k // gs, device=w.device)
        self.clip = self.config.clip
        stats = input_stats(module)
        if self.clip == "output" and stats is None:
            self.clip = "weight"  # no observed inputs for this layer: the weight error alone (as quantize_)
        if self.clip is not None:
            weight = None if self.clip == "weight" else stats.detach().float().to(w.device).reshape(k // gs, gs)
            ratio = _search(g, self.bits, self.symmetric, weight)
        module.register_buffer("weight_clip_ratio", ratio)
        if self.lsq:
            scale, _ = _qparams(g, self.bits, self.symmetric, ratio)
            module.weight_scale_lsq = nn.Parameter(scale.clone())

    def _groups(self, w: Tensor) -> Tensor:
        n, k = w.shape
        return w.reshape(n, -1, k if self.group_size is None else self.group_size)

    def _grid(self, module: nn.Module, g: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """(scale [N, G], zero point [N, G] as float, or None when symmetric) for groups g [N, G, gs]."""
        from fastq.quantization.intx import _qparams

        ratio = module.weight_clip_ratio
        if not self.lsq:
            scale, zero = _qparams(g.detach().float(), self.bits, self.symmetric, ratio)
            return scale, None if self.symmetric else zero
        top = (1 << self.bits) - 1
        scale = _lsq(module.weight_scale_lsq, g.numel(), (top - 1) // 2 if self.symmetric else top)
        if self.symmetric:
            return scale, None
        lo = g.detach().float().amin(dim=-1).clamp_max(0) * ratio
        return scale, torch.clamp(torch.round(-lo / scale.detach()), 0, top)

    def fake_weight(self, module: nn.Module, w: Tensor) -> Tensor:
        g = self._groups(w)
        scale, zero = self._grid(module, g)
        return fake_intx(g, scale, zero, self.bits).reshape(w.shape)

    def build(self, module: nn.Module, twin: nn.Module) -> nn.Module:
        """The config's IntxLinear (built without clipping), re-packed from this scheme's grid when
        clipping or LSQ make it differ from round to nearest at amax."""
        from fastq.quantization.intx import _codes

        rtn = dataclasses.replace(self.config, clip=None)
        handler = handler_for(twin, rtn)
        if handler is None:
            raise UnsupportedLayerError(f"{type(self.config).__name__} has no quantize_ handler for "
                                        f"{type(twin).__name__}")
        q = handler(twin, rtn)
        if self.lsq or self.clip is not None:
            g = self._groups(_weight2d(module).detach().float())
            scale, zero = self._grid(module, g)
            scale = scale.detach().clamp_min(FLT_MIN)
            z = torch.full_like(scale, float(1 << (self.bits - 1))) if zero is None else zero
            codes = _codes(g, scale, z, self.bits, self.symmetric).reshape(g.shape[0], -1).to(torch.uint8)
            zero_u8 = None if zero is None else zero.to(torch.uint8)
            q.weight_packed = torch.ops.fastq.intx_pack_weight(codes, scale.contiguous(), zero_u8, self.bits)
            q.clip = self.clip
        return q


class IntxDynamicScheme(IntxWeightScheme):
    """W4A8 (Int4DynamicConfig): intx weights as IntxWeightScheme, per-token symmetric int8
    activations as the kernel quantizes them (``quantize_int8(x, PER_ROW, True)``)."""

    def fake_act(self, module: nn.Module, x: Tensor) -> Tensor:
        return fake_act_per_token(x, True)


def _refuse_lsq(config, lsq: bool) -> None:
    if lsq:
        raise ValueError(f"prepare_qat_: lsq=True is not supported for {type(config).__name__}: it has no free scale "
                         "to learn (binary / ternary: mean |W| per row by definition; power of two: a power of two per "
                         "row; weight sharing trains its centroids without it); pass lsq=False")


class CodebookScaleScheme(QATScheme):
    """BinaryConfig, TernaryConfig, PowerOfTwoConfig: each forward encodes the current weight with the
    config's encoder (``codebook.encode``: per-row sign / TWN threshold / power-of-two range and scale);
    value ``codebook_weight(codes, table, scale)``, gradient straight through to the float weight.
    ``build`` is the quantize_ handler on the same weight: the same encoding."""

    def __init__(self, config, lsq: bool = False) -> None:
        _refuse_lsq(config, lsq)
        super().__init__(config, lsq)

    def fake_weight(self, module: nn.Module, w: Tensor) -> Tensor:
        from fastq.ops.reference import codebook_weight
        from fastq.quantization.codebook import encode

        enc = encode(self.config, w)
        # _ExactForward, not w + (q - w).detach(): that sum may round away from q in the last bit
        return _ExactForward.apply(w, codebook_weight(enc.codes, enc.codebook, enc.scale).to(w.device))


class WeightSharingScheme(QATScheme):
    """WeightSharingConfig: k-means once at setup (``codebook.encode``, the layer's pruning mask
    included), then fixed codes (``weight_codes``) and trained centroids (``weight_codebook``); see the
    module docstring. ``build`` packs those codes and centroids into the config's SharedWeight module."""

    def __init__(self, config, lsq: bool = False) -> None:
        _refuse_lsq(config, lsq)
        super().__init__(config, lsq)
        self.layout = None  # the setup Encoded without its tensors: bits, clusters, kind, zero_entry

    def setup(self, module: nn.Module) -> None:
        from fastq.quantization.codebook import encode

        w = _weight2d(module)
        mask = module._buffers.get("weight_mask")
        enc = encode(self.config, w, None if mask is None else mask.reshape(w.shape[0], -1))
        self.layout = enc._replace(codes=None, codebook=None)
        module.register_buffer("weight_codes", enc.codes.to(w.device))
        module.weight_codebook = nn.Parameter(enc.codebook.to(w.device))

    def _table(self, module: nn.Module) -> Tensor:
        """The trained centroids, entry 0 rebuilt as exactly 0.0 when it is the pruned weights' entry
        (so it gets no gradient and no optimizer can move it)."""
        t = module.weight_codebook
        if not self.layout.zero_entry:
            return t
        return torch.cat([torch.zeros_like(t[..., :1]), t[..., 1:]], dim=-1)

    def fake_weight(self, module: nn.Module, w: Tensor) -> Tensor:
        from fastq.ops.reference import codebook_weight

        return codebook_weight(module.weight_codes, self._table(module))

    def build(self, module: nn.Module, twin: nn.Module) -> nn.Module:
        from fastq.nn.codebook import SharedWeightConv2d, SharedWeightLinear

        enc = self.layout._replace(codes=module.weight_codes.cpu(), codebook=self._table(module).detach().float().cpu())
        cls = SharedWeightLinear if isinstance(twin, nn.Linear) else SharedWeightConv2d
        return cls.from_float(twin, self.config, encoded=enc)


def register_qat(config_type: type, scheme: type) -> None:
    """Make ``prepare_qat_`` accept ``config_type`` configs, trained with ``scheme`` (a QATScheme subclass
    constructed as ``scheme(config, lsq)``)."""
    if not isinstance(config_type, type):
        raise TypeError(f"config_type must be a class, got {config_type!r}")
    if not (isinstance(scheme, type) and issubclass(scheme, QATScheme)):
        raise TypeError(f"scheme must be a QATScheme subclass, got {scheme!r}")
    _SCHEMES[config_type] = scheme


register_qat(Int8DynamicConfig, Int8DynamicScheme)
register_qat(Int8WeightOnlyConfig, Int8WeightOnlyScheme)
register_qat(IntxWeightOnlyConfig, IntxWeightScheme)
register_qat(Int4WeightOnlyConfig, IntxWeightScheme)
register_qat(Int4DynamicConfig, IntxDynamicScheme)


def _register_late() -> None:
    from fastq.quantization.codebook import BinaryConfig, PowerOfTwoConfig, TernaryConfig, WeightSharingConfig
    from fastq.quantization.static import Int8StaticConfig

    register_qat(Int8StaticConfig, Int8StaticScheme)
    for config_type in (BinaryConfig, TernaryConfig, PowerOfTwoConfig):
        register_qat(config_type, CodebookScaleScheme)
    register_qat(WeightSharingConfig, WeightSharingScheme)


_register_late()


# ---- QAT modules --------------------------------------------------------------------------------

def _weight2d(module: nn.Module) -> Tensor:
    return module.weight.reshape(module.weight.shape[0], -1)


class QATModule:
    """Mixin of QATLinear / QATConv2d: the exact forward, the STE graph, conversion."""

    qat_scheme: QATScheme

    def _twin(self) -> nn.Module:
        raise NotImplementedError

    def to_quantized(self) -> nn.Module:
        """The real fastq module for the current weights (what ``convert_`` swaps in)."""
        with torch.no_grad():
            q = self.qat_scheme.build(self, self._twin())
        return q.train(False)

    def _qat_forward(self, x: Tensor, ste: Callable[[], Tensor]) -> Tensor:
        if isinstance(self.qat_scheme, Int8StaticScheme):
            self.qat_scheme._observe(self, x)
        y = self.to_quantized()(x.detach())
        if not torch.is_grad_enabled():
            return y
        return _ExactForward.apply(ste(), y)


class QATLinear(QATModule, nn.Linear):
    """nn.Linear trained through the config's quantization (see the module docstring)."""

    def _twin(self) -> nn.Linear:
        twin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        twin.weight, twin.bias = self.weight, self.bias
        return twin

    def forward(self, x: Tensor) -> Tensor:
        def ste() -> Tensor:
            s = self.qat_scheme
            return F.linear(s.fake_act(self, x), s.fake_weight(self, self.weight), self.bias)

        return self._qat_forward(x, ste)


class QATConv2d(QATModule, ConvGeometry, nn.Conv2d):
    """nn.Conv2d (groups=1) trained through the config's quantization. The STE graph runs the
    convolution as the kernels do, one GEMM over im2col patches (``ConvGeometry``), when the scheme
    quantizes activations (their scales are per im2col row); for weight-only schemes it is
    nn.Conv2d's own convolution of the fake weight: the same gradients without building the patch
    matrix (F.unfold was the bulk of a step's time), since only its gradients are used."""

    def _twin(self) -> nn.Conv2d:
        twin = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode, device="meta")
        twin.weight, twin.bias = self.weight, self.bias
        return twin

    def forward(self, x: Tensor) -> Tensor:
        def ste() -> Tensor:
            s = self.qat_scheme
            w = s.fake_weight(self, _weight2d(self))
            if type(s).fake_act is QATScheme.fake_act:  # weight-only: fake_act is the identity
                return self._conv_forward(x, w.reshape(self.weight.shape), self.bias)
            return ConvGeometry._conv(self, x, lambda cols: F.linear(s.fake_act(self, cols), w, self.bias),
                                      f"QATConv2d({self.extra_repr()})")

        return self._qat_forward(x, ste)


_QAT_TYPES = {nn.Linear: QATLinear, nn.Conv2d: QATConv2d}


def _make_qat(module: nn.Module, scheme: QATScheme) -> nn.Module:
    cls = _QAT_TYPES[type(module)]
    q = cls.__new__(cls)
    q.__dict__ = module.__dict__.copy()  # same Parameters, buffers and hooks: nothing is copied
    q._parameters, q._buffers, q._modules = dict(module._parameters), dict(module._buffers), dict(module._modules)
    q.qat_scheme = scheme
    if hasattr(module, "_fastq_calibration"):
        q._fastq_calibration = module._fastq_calibration
    scheme.setup(q)
    q.to_quantized()  # UnsupportedLayerError now rather than at the first step
    return q


def prepare_qat_(model: nn.Module, config, *, lsq: bool = False,
                 filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
                 skip: Iterable[Union[str, type]] = ()) -> nn.Module:
    """Insert fake quantization for ``config`` into ``model`` in place (QATLinear / QATConv2d).

    Args:
        model: a float model (calibrate it first for ``Int8StaticConfig`` to start from calibrated
            activation ranges; otherwise static layers observe their inputs in training forwards).
        config: any config with a registered scheme: Int8DynamicConfig, Int8WeightOnlyConfig,
            Int8StaticConfig, IntxWeightOnlyConfig, Int4WeightOnlyConfig, Int4DynamicConfig,
            BinaryConfig, TernaryConfig, PowerOfTwoConfig, WeightSharingConfig (and those that
            ``register_qat``). The intx configs take nn.Linear only (Conv2d layers stay float with a
            note); their ``clip`` ratio is searched once, here, and kept fixed. The codebook configs
            take nn.Linear and nn.Conv2d; WeightSharingConfig clusters here, once, and then trains
            the centroids with the codes fixed.
        lsq: learn the quantization scales (LSQ): weight scales per channel / group, and the static
            activation scale (int8 and intx configs; the codebook configs refuse it).
        filter_fn, skip: as in ``quantize_``: layers to keep float.

    Returns:
        ``model`` (the same object). Train it as usual, then ``convert_(model)``.

    Raises:
        TypeError: a config without a QAT scheme; ValueError: no layer could be prepared, a
            sub-8-bit config with ``gptq=True``, or ``lsq=True`` with a codebook config.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat_ expects an nn.Module, got {type(model).__name__}")
    scheme_cls = _SCHEMES.get(type(config))
    if scheme_cls is None:
        raise TypeError(f"no QAT scheme for {type(config).__name__}; supported: "
                        f"{sorted(c.__name__ for c in _SCHEMES)} (others plug in with register_qat)")
    if not isinstance(lsq, bool):
        raise TypeError(f"lsq must be a bool, got {lsq!r}")
    scheme_cls(config, lsq)  # a scheme refuses configs it cannot train here, before any layer is touched
    names = {n for n, _ in model.named_modules()}
    skip_names, skip_types = _check_skip(skip, names)
    replacements = {}
    for name, module in model.named_modules():
        if type(module) not in _QAT_TYPES:
            continue
        if _skipped_by_name(name, skip_names) or isinstance(module, skip_types) or \
                (filter_fn is not None and not filter_fn(module, name)):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            setattr(module, SKIP_ATTR, f"grouped convolution (groups={module.groups}) is not supported")
            continue
        try:
            replacements[id(module)] = _make_qat(module, scheme_cls(config, lsq))
        except UnsupportedLayerError as exc:
            setattr(module, SKIP_ATTR, str(exc))
    if not replacements:
        raise ValueError(f"prepare_qat_: no layer of the model can be trained for {type(config).__name__} "
                         "(see fastq.summary(model) for the reasons)")
    if id(model) in replacements:
        return replacements[id(model)]
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return model


@torch.no_grad()
def convert_(model: nn.Module) -> nn.Module:
    """Replace every QAT module of ``model`` by the real fastq module (in place). Its outputs equal the
    QAT model's forward bit for bit (the QAT forward already runs this module's kernel).

    Returns ``model`` (or the converted module when ``model`` itself is a QAT module).

    Raises:
        ValueError: the model holds no QAT module; CalibrationError: a static layer never saw data.
    """
    if isinstance(model, QATModule):
        return model.to_quantized()
    found = False
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, QATModule):
                if isinstance(child.qat_scheme, Int8StaticScheme) and child.act_symmetric is None:
                    raise CalibrationError(f"convert_: {child_name} never saw activations (calibrate, or train first)")
                found = True
    if not found:
        raise ValueError("convert_: the model has no QAT layers (call prepare_qat_ first)")
    # Build every module first, then swap: an error leaves the model as it was.
    built = {id(c): c.to_quantized() for p in model.modules() for c in p._modules.values() if isinstance(c, QATModule)}
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if id(child) in built:
                setattr(parent, child_name, built[id(child)])
    return model
