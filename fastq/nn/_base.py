"""Shared machinery of the int8 GEMM modules (QuantLinear, QuantConv2d).

Invariants:
  * A module holds exactly three persistent buffers: ``weight_packed`` (1-D int8, the ISA-independent
    layout of ``int8_pack_weight``, saved as is: loading needs no repacking), ``weight_scale``
    (float32: [N] in "w8a8" mode, [N, G] in "int8_weight_only" mode) and ``bias`` (float32 [N], or
    absent). Their shapes follow from the constructor arguments alone, so ``cls(**init_kwargs())``
    builds an empty module that ``load_state_dict`` fills.
  * The forward pass is the module's prepared plan (``_prepared.PreparedLayer``: one native call in
    plain eager mode) or else one call of a ``torch.ops.fastq`` linear op on a [*, K] view; output
    dtype = input dtype. Inputs are validated here, with the layer's description in every message.
  * Weight quantization is symmetric int8 with ``fastq.ops.quantize_int8`` (per row or per group).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fastq.nn._prepared import NO_PLAN, PreparedLayer
from fastq.ops import PER_ROW, call_op, plans, quantize_int8
from fastq.ops.layouts import FLOAT_DTYPES, packed_sizes
from fastq.ops.reference import int8_unpack_weight

W8A8 = "w8a8"
WEIGHT_ONLY = "int8_weight_only"
MODES = (W8A8, WEIGHT_ONLY)


class UnsupportedLayerError(ValueError):
    """A float layer that fastq cannot quantize (``quantize_`` skips it and notes the reason)."""


def quantize_weight(w: Tensor, group_size: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of a float weight, per output row or per group along K.

    Args:
        w: float weight [N, K] (float32/float16/bfloat16).
        group_size: None for one scale per row (per channel), else a positive divisor of K.

    Returns:
        ``(codes, scale)``: codes int8 [N, K] in [-127, 127]; scale float32 [N, 1] (per channel) or
        [N, K // group_size], with ``w ~= codes * scale`` (scale = amax / 127 of the row or group).

    Raises:
        UnsupportedLayerError: the weight holds NaN or Inf (it has no meaningful int8 form).
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_weight expects a 2-D [N, K] weight, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise UnsupportedLayerError("the weight holds NaN or Inf values")
    codes, scale, _ = quantize_int8(w.detach(), PER_ROW if group_size is None else group_size, True)
    return codes, scale


def mode_args(config) -> dict:
    """The (mode, act_symmetric, group_size) constructor arguments a quantization config asks for."""
    from fastq.quantization.configs import Int8DynamicConfig, Int8WeightOnlyConfig  # no import cycle

    if isinstance(config, Int8DynamicConfig):
        return {"mode": W8A8, "act_symmetric": config.act_symmetric, "group_size": None}
    if isinstance(config, Int8WeightOnlyConfig):
        return {"mode": WEIGHT_ONLY, "act_symmetric": True, "group_size": config.group_size}
    raise TypeError(f"config must be an Int8DynamicConfig or Int8WeightOnlyConfig, got {type(config).__name__}")


class Int8GemmModule(PreparedLayer):
    """Base of the modules whose forward is an int8 GEMM against an [N, K] packed weight."""

    # model.half() / model.to(torch.bfloat16) must not cast the float32 scales and bias (the ops
    # require float32, and fp16 scales would lose precision): conversions move them between devices
    # only. The int8 packed weight is not floating, so dtype casts leave it alone anyway.
    _KEEP_FLOAT32 = ("weight_scale", "bias")

    def _init_gemm(self, n: int, k: int, bias: bool, mode: str, act_symmetric: bool,
                   group_size: Optional[int]) -> None:
        self._init_plan()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(act_symmetric, bool):
            raise TypeError(f"act_symmetric must be a bool, got {type(act_symmetric).__name__}")
        if n <= 0 or k <= 0:
            raise ValueError(f"the weight must be non-empty, got [{n}, {k}] (out x in)")
        if group_size is not None:
            if mode != WEIGHT_ONLY:
                raise ValueError("group_size applies only to mode='int8_weight_only' (w8a8 weights are per channel)")
            if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
                raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
            if k % group_size:
                raise UnsupportedLayerError(f"group_size {group_size} does not divide K={k}")
        self._n, self._k = n, k
        self.mode, self.act_symmetric, self.group_size = mode, act_symmetric, group_size
        self.register_buffer("weight_packed", torch.zeros(packed_sizes(n, k)[2], dtype=torch.int8))
        scale_shape = (n,) if mode == W8A8 else (n, 1 if group_size is None else k // group_size)
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(n, dtype=torch.float32) if bias else None)

    @torch.no_grad()
    def _set_weight(self, w: Tensor, bias: Optional[Tensor]) -> None:
        """Quantize and pack a float [N, K] weight (and copy the bias) into this module's buffers."""
        codes, scale = quantize_weight(w, self.group_size)
        device = w.device
        self.weight_packed = torch.ops.fastq.int8_pack_weight(codes)
        self.weight_scale = scale.reshape(self.weight_scale.shape).to(device)
        if self.bias is not None:
            self.bias = bias.detach().to(device=device, dtype=torch.float32).clone()
        self.prepare()

    def _make_plan(self):
        where = self._layer_name()
        try:
            if self.mode == W8A8:
                plan = plans.int8_linear_dynamic(self.weight_packed, self.weight_scale, self.bias, self._n, self._k,
                                                 self.act_symmetric, where=where)
            else:
                plan = plans.int8_weight_only_linear(self.weight_packed, self.weight_scale, self.bias, self._n,
                                                     self._k, where=where)
        except ValueError as exc:  # name the module's buffers, not the op's arguments
            raise ValueError(str(exc).replace("w_packed", "weight_packed").replace("w_scale", "weight_scale")) \
                from None
        return NO_PLAN if plan is None else plan

    def _gemm(self, x: Tensor) -> Tensor:
        """[*, K] -> [*, N] through the fastq op of this module's mode; output dtype = x's dtype."""
        if self.mode == W8A8:
            return call_op("int8_linear_dynamic", x, self.weight_packed, self.weight_scale, self.bias, self._n,
                           self.act_symmetric, x.dtype)
        return call_op("int8_weight_only_linear", x, self.weight_packed, self.weight_scale, self.bias, self._n)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._describe()}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self._describe()}: input must be float32, float16 or bfloat16, got {x.dtype}")

    def _describe(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # ---- introspection (summary, tests, save/load) ----------------------------------------------

    def granularity(self) -> str:
        """Weight granularity: ``"per_channel"`` or ``"group<g>"``."""
        return "per_channel" if self.group_size is None else f"group{self.group_size}"

    @property
    def bits(self) -> int:
        return 8

    def weight_shape(self) -> tuple:
        """Shape of the float weight this module replaces: (N, K)."""
        return (self._n, self._k)

    def int_weight(self) -> Tensor:
        """The int8 codes [N, K] (unpacked from ``weight_packed``)."""
        return int8_unpack_weight(self.weight_packed, self._n, self._k)[0]

    def dequantized_weight(self) -> Tensor:
        """float32 [N, K]: codes x scales, the weight this module effectively multiplies by."""
        w = self.int_weight().float()
        scale = self.weight_scale.reshape(self._n, -1)
        groups = scale.shape[1]
        return (w.reshape(self._n, groups, -1) * scale.unsqueeze(-1)).reshape(self._n, self._k)

    def weight_sparsity(self) -> float:
        """Fraction of int8 weight codes that are zero."""
        return float((self.int_weight() == 0).float().mean())

    def weight_bytes(self) -> int:
        """Bytes this layer stores: packed weight (with its padding and column sums), scales, bias."""
        return sum(t.numel() * t.element_size() for t in (self.weight_packed, self.weight_scale, self.bias)
                   if t is not None)

    def float_weight_bytes(self) -> int:
        """Bytes of the fp32 layer it replaces: weight [N, K] and bias [N]."""
        return 4 * (self._n * self._k + (self._n if self.bias is not None else 0))
