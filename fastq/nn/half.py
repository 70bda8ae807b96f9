"""HalfLinear / HalfConv2d: weights stored in float16 or bfloat16 (half the bytes of fp32).

Invariants:
  * Buffers: ``weight`` in the storage dtype ([N, K], or [O, C, kh, kw] for convolutions) and
    ``bias`` float32 [N] (or absent); ``cls(**init_kwargs())`` is an empty twin.
  * Compute: on a CPU with native bf16 dot products (avx512_bf16 or AMX; ``cpu_has_bf16()``) a
    bfloat16 weight multiplies bfloat16-rounded activations with float32 accumulation (oneDNN via
    torch's bf16 ``F.linear``); everywhere else on the CPU the weight is upcast to float32 (exact)
    and the product runs in float32. On CUDA the product runs in the weight's dtype (tensor cores,
    float32 accumulation). The bias is added in float32; the output has the input's dtype.
  * ``model.half()`` / ``.to(bfloat16)`` never recast the stored weight or the float32 bias.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastq.nn.conv import ConvGeometry, _pair

HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (the avx512_bf16 or amx_bf16 flag, Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class HalfWeight:
    """Mixin: the stored half weight, float32 bias, compute-dtype choice and byte accounting."""

    def _init_half(self, weight_shape: tuple, bias: bool, dtype: str) -> None:
        if dtype not in HALF_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(HALF_DTYPES)}, got {dtype!r}")
        self.dtype_name = dtype
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=HALF_DTYPES[dtype]))
        self.register_buffer("bias", torch.zeros(weight_shape[0], dtype=torch.float32) if bias else None)

    @torch.no_grad()
    def _set_weight(self, w: Tensor, bias: Optional[Tensor]) -> None:
        if not bool(torch.isfinite(w).all()):
            from fastq.nn._base import UnsupportedLayerError

            raise UnsupportedLayerError("the weight holds NaN or Inf values")
        self.weight = w.detach().to(HALF_DTYPES[self.dtype_name]).reshape(self.weight.shape).clone()
        if bias is not None:
            self.bias = bias.detach().to(device=w.device, dtype=torch.float32).clone()

    def _operands(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x, weight) in the compute dtype this device supports (see the module docstring)."""
        w = self.weight
        if x.device.type == "cuda" or (w.dtype == torch.bfloat16 and cpu_has_bf16()):
            return x.to(w.dtype), w
        return x.float(), w.float()

    def _finish(self, y: Tensor, x_dtype: torch.dtype, bias_shape: tuple) -> Tensor:
        y = y.float()
        if self.bias is not None:
            y = y + self.bias.reshape(bias_shape)
        return y.to(x_dtype)

    def _apply(self, fn, recurse=True):
        keep = {n: t for n, t in self._buffers.items() if n in ("weight", "bias") and t is not None}
        super()._apply(fn, recurse)
        for n, t in keep.items():
            self._buffers[n] = t.to(self._buffers[n].device)
        return self

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}: input must be a float tensor, got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")

    @property
    def bits(self) -> int:
        return 16

    @property
    def mode(self) -> str:
        return self.dtype_name

    def weight_shape(self) -> tuple:
        return tuple(self.weight.shape)

    def weight_sparsity(self) -> float:
        return float((self.weight == 0).float().mean())

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.bias) if t is not None)

    def float_weight_bytes(self) -> int:
        return 4 * (self.weight.numel() + (self.bias.numel() if self.bias is not None else 0))

    def dequantized_weight(self) -> Tensor:
        return self.weight.float().reshape(self.weight.shape[0], -1)


class HalfLinear(HalfWeight, nn.Module):
    """``y = x @ W.T + b`` with W stored in float16 / bfloat16.

    Shapes: input [*, K] (any float dtype) -> output [*, N] in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: str = "bfloat16") -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_half((self.out_features, self.in_features), bool(bias), dtype)

    @classmethod
    def from_float(cls, module: nn.Linear, dtype: str) -> "HalfLinear":
        q = cls(module.in_features, module.out_features, module.bias is not None, dtype)
        q._set_weight(module.weight, module.bias)
        return q

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"HalfLinear: input of shape {tuple(x.shape)} does not end in in_features={self.in_features}")
        xc, w = self._operands(x)
        return self._finish(F.linear(xc, w), x.dtype, (-1,))

    def init_kwargs(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "dtype": self.dtype_name}

    def granularity(self) -> str:
        return "per_tensor"

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"dtype={self.dtype_name}"


class HalfConv2d(HalfWeight, ConvGeometry, nn.Module):
    """nn.Conv2d (any groups) with the weight stored in float16 / bfloat16; runs ``F.conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", dtype: str = "bfloat16") -> None:
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or in_channels % groups \
                or out_channels % groups:
            raise ValueError(f"groups must be a positive int dividing both channel counts, got {groups!r}")
        self.groups = groups
        kh, kw = _pair(kernel_size, "kernel_size")
        self._init_half((self.out_channels, self.in_channels // groups, kh, kw), bool(bias), dtype)

    @classmethod
    def from_float(cls, module: nn.Conv2d, dtype: str) -> "HalfConv2d":
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode, dtype)
        q._set_weight(module.weight, module.bias)
        return q

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        xc, w = self._operands(x)
        pad = self._explicit_pad()
        if pad is not None:
            xc = F.pad(xc, pad, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        y = F.conv2d(xc, w, None, self.stride, padding, self.dilation, self.groups)
        return self._finish(y, x.dtype, (-1, 1, 1))

    def init_kwargs(self) -> dict:
        return {**self.geometry_kwargs(), "groups": self.groups, "bias": self.bias is not None,
                "dtype": self.dtype_name}

    def granularity(self) -> str:
        return "per_tensor"

    def extra_repr(self) -> str:
        return self.geometry_repr() + f", groups={self.groups}, bias={self.bias is not None}, dtype={self.dtype_name}"
