"""StaticQuantLinear / StaticQuantConv2d: W8A8 with calibrated (static) activation quantization.

Invariants:
  * Same weight buffers as QuantLinear / QuantConv2d in "w8a8" mode (``_base``), plus
    ``act_scale`` (float32 [1]), ``act_zero_point`` (int32 [1], asymmetric activations only) and
    ``act_smooth`` (float32 [K] SmoothQuant divisors, only when ``smooth=True``). Their presence
    follows from the constructor arguments, so ``cls(**init_kwargs())`` is an empty twin that
    ``load_state_dict`` fills.
  * The forward is the module's plan in plain eager mode, else one ``int8_linear_static`` op call
    (either way one native call: the activation quantization happens inside the GEMM call; there is
    no run-time max pass); output dtype = input dtype.
  * Scales are float32 and stay float32 under ``model.half()`` / ``.to(bfloat16)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fastq.nn._base import W8A8, UnsupportedLayerError
from fastq.nn._prepared import NO_PLAN
from fastq.nn.conv import QuantConv2d
from fastq.nn.linear import QuantLinear
from fastq.ops import call_op, plans

W8A8_STATIC = "w8a8_static"


class StaticActivations:
    """Mixin over an Int8GemmModule in w8a8 mode: calibrated activation parameters and the static GEMM."""

    _KEEP_FLOAT32 = ("weight_scale", "bias", "act_scale", "act_smooth")

    def _init_static(self, act_symmetric: bool, smooth: bool) -> None:
        if not isinstance(smooth, bool):
            raise TypeError(f"smooth must be a bool, got {type(smooth).__name__}")
        self.mode = W8A8_STATIC
        self.register_buffer("act_scale", torch.ones(1, dtype=torch.float32))
        self.register_buffer("act_zero_point", None if act_symmetric else torch.zeros(1, dtype=torch.int32))
        self.register_buffer("act_smooth", torch.ones(self._k, dtype=torch.float32) if smooth else None)

    @torch.no_grad()
    def set_activation_qparams(self, scale: Tensor, zero_point: Optional[Tensor] = None,
                               smooth: Optional[Tensor] = None) -> None:
        """Install calibrated activation parameters (validated: positive finite scale, zero point
        in [0, 255], positive finite divisors, matching this module's symmetry and smoothing)."""
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if scale.numel() != 1 or not bool(torch.isfinite(scale).all()) or float(scale) < torch.finfo(torch.float32).tiny:
            raise ValueError(f"{self._describe()}: activation scale must be one finite positive float, got {scale}")
        if (zero_point is None) != self.act_symmetric:
            raise ValueError(f"{self._describe()}: a zero point is required exactly for asymmetric activations")
        if (smooth is None) != (self.act_smooth is None):
            raise ValueError(f"{self._describe()}: smoothing divisors are required exactly when smooth=True")
        if zero_point is not None:
            zp = torch.as_tensor(zero_point).reshape(-1)
            if zp.numel() != 1 or not 0 <= int(zp) <= 255:
                raise ValueError(f"{self._describe()}: zero point must be one int in [0, 255], got {zp}")
        if smooth is not None:
            s = torch.as_tensor(smooth, dtype=torch.float32).reshape(-1)
            if s.numel() != self._k or not bool(torch.isfinite(s).all()) or float(s.min()) <= 0:
                raise ValueError(f"{self._describe()}: smoothing divisors must be {self._k} finite positive floats")
        device = self.weight_packed.device  # all parameters live with the weight
        self.act_scale = scale.to(device).clone()
        if zero_point is not None:
            self.act_zero_point = torch.full((1,), int(zp), dtype=torch.int32, device=device)
        if smooth is not None:
            self.act_smooth = s.to(device).clone()
        self.prepare()  # validated and planned now, not at the first forward

    def _make_plan(self):
        try:
            plan = plans.int8_linear_static(self.weight_packed, self.weight_scale, self.bias, self._n, self._k,
                                            self.act_scale, self.act_zero_point, self.act_smooth,
                                            where=self._layer_name())
        except ValueError as exc:  # name the module's buffers, not the op's arguments
            raise ValueError(str(exc).replace("w_packed", "weight_packed").replace("w_scale", "weight_scale")) \
                from None
        return NO_PLAN if plan is None else plan

    def _gemm(self, x: Tensor) -> Tensor:
        return call_op("int8_linear_static", x, self.weight_packed, self.weight_scale, self.bias, self._n, self.act_scale,
                       self.act_zero_point, self.act_smooth, x.dtype)

    def static_kwargs(self) -> dict:
        return {"act_symmetric": self.act_symmetric, "smooth": self.act_smooth is not None}

    def act_repr(self) -> str:
        s = f", act=static_per_tensor_{'symmetric' if self.act_symmetric else 'asymmetric'}"
        return s + (", smooth" if self.act_smooth is not None else "")


class StaticQuantLinear(StaticActivations, QuantLinear):
    """``y = x @ W.T + b`` with int8 weights and statically quantized int8/uint8 activations.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        act_symmetric: int8 activations with one calibrated scale (True) or uint8 with a scale and
            zero point (False; for one-sided inputs such as GELU/ReLU outputs).
        smooth: the module divides its input by per-channel SmoothQuant factors (``act_smooth``)
            inside the kernel's quantization step.
        activation: as ``QuantLinear``'s (set by ``fuse_activations_``).

    Shapes: input [*, K] float32/float16/bfloat16 -> output [*, N] in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act_symmetric: bool = True,
                 smooth: bool = False, activation: Optional[str] = None) -> None:
        super().__init__(in_features, out_features, bias, mode=W8A8, act_symmetric=act_symmetric,
                         activation=activation)
        self._init_static(act_symmetric, smooth)

    @classmethod
    def from_float(cls, module: nn.Linear, scale: Tensor, zero_point: Optional[Tensor] = None,
                   smooth: Optional[Tensor] = None) -> "StaticQuantLinear":
        """Quantize an ``nn.Linear`` given calibrated activation parameters (see ``fastq.calibrate``)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"StaticQuantLinear.from_float expects an nn.Linear, got {type(module).__name__}")
        q = cls(module.in_features, module.out_features, module.bias is not None, zero_point is None, smooth is not None)
        q._set_weight(module.weight, module.bias)
        q.set_activation_qparams(scale, zero_point, smooth)
        return q

    def init_kwargs(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                **self.static_kwargs(), **self._activation_kwargs()}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.mode}, bits={self.bits}, weight={self.granularity()}" + self.act_repr())


class StaticQuantConv2d(StaticActivations, QuantConv2d):
    """2-D convolution (groups=1) with int8 weights and statically quantized activations; the
    convolution is one GEMM over im2col patches (``ConvGeometry``), so padding zeros quantize to
    exact zeros. Smoothing is not supported for convolutions."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", act_symmetric: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode,
                         mode=W8A8, act_symmetric=act_symmetric)
        self._init_static(act_symmetric, False)

    @classmethod
    def from_float(cls, module: nn.Conv2d, scale: Tensor, zero_point: Optional[Tensor] = None) -> "StaticQuantConv2d":
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"StaticQuantConv2d.from_float expects an nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1:
            raise UnsupportedLayerError(f"grouped convolution (groups={module.groups}) is not supported")
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.bias is not None, module.padding_mode, zero_point is None)
        q._set_weight(module.weight.reshape(module.out_channels, -1), module.bias)
        q.set_activation_qparams(scale, zero_point)
        return q

    def init_kwargs(self) -> dict:
        return {**self.geometry_kwargs(), "bias": self.bias is not None, "act_symmetric": self.act_symmetric}

    def extra_repr(self) -> str:
        return (self.geometry_repr() + f", bias={self.bias is not None}, mode={self.mode}, bits={self.bits}, "
                f"weight={self.granularity()}" + self.act_repr())
