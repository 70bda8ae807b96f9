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
  * The hook for other configs is ``register_qat(ConfigType, SchemeClass)``: a ``QATScheme``
    subclass supplies ``fake_weight`` (and ``fake_act`` when activations are quantized); its
    ``build`` defaults to the config's registered ``quantize_`` handler, so the exact forward and
    ``convert_`` come for free.
"""

from __future__ import annotations

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
from fastq.quantization.configs import Int8DynamicConfig, Int8WeightOnlyConfig

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
            raise UnsupportedLayerError(f"{type(self.config).__name__} has no quantize_ handler for {type(twin).__name__}")
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
        _, scale, zp = quantize_int8(x.detach(), PER_ROW, self.config.act_symmetric)
        if self.config.act_symmetric:
            return fake_quant(x, scale, None, -127, 127)
        return fake_quant(x, scale, zp.float(), 0, 255)


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


def _register_static() -> None:
    from fastq.quantization.static import Int8StaticConfig

    register_qat(Int8StaticConfig, Int8StaticScheme)


_register_static()


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
    """nn.Conv2d (groups=1) trained through the config's quantization; the STE graph runs the
    convolution as the kernels do, one GEMM over im2col patches (``ConvGeometry``)."""

    def _twin(self) -> nn.Conv2d:
        twin = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode, device="meta")
        twin.weight, twin.bias = self.weight, self.bias
        return twin

    def forward(self, x: Tensor) -> Tensor:
        def ste() -> Tensor:
            s = self.qat_scheme
            w = s.fake_weight(self, _weight2d(self))
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
            Int8StaticConfig (and those that ``register_qat``).
        lsq: learn the quantization scales (LSQ): weight scales per channel / group, and the static
            activation scale.
        filter_fn, skip: as in ``quantize_``: layers to keep float.

    Returns:
        ``model`` (the same object). Train it as usual, then ``convert_(model)``.

    Raises:
        TypeError: a config without a QAT scheme; ValueError: no layer could be prepared.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat_ expects an nn.Module, got {type(model).__name__}")
    scheme_cls = _SCHEMES.get(type(config))
    if scheme_cls is None:
        raise TypeError(f"no QAT scheme for {type(config).__name__}; supported: "
                        f"{sorted(c.__name__ for c in _SCHEMES)} (others plug in with register_qat)")
    if not isinstance(lsq, bool):
        raise TypeError(f"lsq must be a bool, got {lsq!r}")
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
