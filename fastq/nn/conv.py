"""Convolution as one GEMM (``ConvGeometry``) and QuantConv2d, the nn.Conv2d replacement that runs
the int8 GEMM kernels of QuantLinear (SparseConv2d runs the sparse ones through the same geometry).

Invariants: see ``_base``. The weight [O, C, kh, kw] is stored as the [O, C*kh*kw] matrix whose
column order (c, i, j) is ``F.unfold``'s, so convolution is one GEMM: 1x1 kernels over the
NHWC-flattened pixels (no im2col), k x k kernels over ``F.unfold`` columns. Non-zero padding modes
and string padding ("same", "valid") become an explicit ``F.pad`` first. groups > 1 is not
supported (``from_float`` raises UnsupportedLayerError, so ``quantize_`` skips such layers).
The output has the input's dtype and is contiguous (NCHW), like nn.Conv2d's.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastq.nn._base import W8A8, Int8GemmModule, UnsupportedLayerError, mode_args

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


class ConvGeometry:
    """The nn.Conv2d geometry (groups=1) of a module whose convolution is one [*, C*kh*kw] -> [*, O]
    GEMM; the subclass supplies the GEMM and keeps its own weight state."""

    def _init_geometry(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation,
                       padding_mode: str) -> int:
        """Validate and store the geometry; returns K = in_channels * kh * kw."""
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if min(self.kernel_size + self.stride + self.dilation) <= 0:
            raise ValueError("kernel_size, stride and dilation must be positive")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding string must be 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' needs stride 1 (as in nn.Conv2d)")
            self.padding: Union[str, tuple[int, int]] = padding
        else:
            self.padding = _pair(padding, "padding")
            if min(self.padding) < 0:
                raise ValueError(f"padding must be >= 0, got {padding!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def _explicit_pad(self) -> Optional[tuple[int, int, int, int]]:
        """(left, right, top, bottom) for F.pad when padding cannot go through F.unfold, else None."""
        if self.padding == "valid":
            return (0, 0, 0, 0) if self.padding_mode != "zeros" else None
        if self.padding == "same":
            (kh, kw), (dh, dw) = self.kernel_size, self.dilation
            th, tw = dh * (kh - 1), dw * (kw - 1)  # the extra pixel of an even total goes right/bottom
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            return (pw, pw, ph, ph)
        return None

    def _conv(self, x: Tensor, gemm: Callable[[Tensor], Tensor], describe: str) -> Tensor:
        """nn.Conv2d's forward with ``gemm`` ([*, K] -> [*, O]) as the multiply."""
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"{describe}: input must be [B, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got shape {tuple(x.shape)}")
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        pad = self._explicit_pad()
        padding = (0, 0)
        if pad is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pad, mode=mode)
        elif not isinstance(self.padding, str):
            padding = self.padding
        b = x.shape[0]
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw), (ph, pw) = self.stride, self.dilation, padding
        h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_out = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if h_out <= 0 or w_out <= 0:
            raise ValueError(f"{describe}: input of shape {tuple(x.shape)} (after padding) is smaller than the kernel")
        if (kh, kw) == (1, 1):
            if ph or pw:
                x = F.pad(x, (pw, pw, ph, ph))
            cols = x[:, :, ::sh, ::sw].permute(0, 2, 3, 1)  # [B, H', W', C]: pixels x channels
            y = gemm(cols.reshape(-1, self.in_channels)).reshape(b, h_out, w_out, self.out_channels)
            y = y.permute(0, 3, 1, 2)
        else:
            cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))  # [B, K, L]
            y = gemm(cols.transpose(1, 2)).transpose(1, 2)  # [B, O, L]
            y = y.reshape(b, self.out_channels, h_out, w_out)
        y = y.contiguous()
        return y.squeeze(0) if unbatched else y

    def weight_shape(self) -> tuple:
        """Shape of the float weight this module replaces: (O, C, kh, kw)."""
        return (self.out_channels, self.in_channels) + self.kernel_size

    def geometry_kwargs(self) -> dict:
        """The geometry's JSON-serialisable constructor arguments."""
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": padding,
                "dilation": list(self.dilation), "padding_mode": self.padding_mode}

    def geometry_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class QuantConv2d(ConvGeometry, Int8GemmModule):
    """2-D convolution (groups=1) with an int8 weight.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode: as
            ``nn.Conv2d`` (padding may be an int, a pair, "same" or "valid"; groups must be 1).
        mode, act_symmetric, group_size: as ``QuantLinear``; K = in_channels * kh * kw.

    Shapes: input [B, C, H, W] or [C, H, W] float32/float16/bfloat16 -> [B, O, H', W'] (or
    [O, H', W']) in the input's dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", mode: str = W8A8, act_symmetric: bool = True,
                 group_size: Optional[int] = None) -> None:
        super().__init__()
        k = self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode)
        self._init_gemm(self.out_channels, k, bool(bias), mode, act_symmetric, group_size)

    @classmethod
    def from_float(cls, module: nn.Conv2d, config) -> "QuantConv2d":
        """Quantize an ``nn.Conv2d`` (groups=1) under an ``Int8DynamicConfig`` or ``Int8WeightOnlyConfig``.

        Raises:
            UnsupportedLayerError: grouped/depthwise convolution, group size not dividing
                C*kh*kw, or a weight with NaN/Inf.
        """
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"QuantConv2d.from_float expects an nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1:
            raise UnsupportedLayerError(f"grouped convolution (groups={module.groups}) is not supported")
        kwargs = mode_args(config)
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.bias is not None, module.padding_mode, **kwargs)
        q._set_weight(module.weight.reshape(module.out_channels, -1), module.bias)
        return q

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        gemm = self._gemm if torch.compiler.is_compiling() else self._run  # the plan's fast path, eager only
        return self._conv(x, gemm, self._describe())

    def _op_forward(self, cols: Tensor) -> Tensor:
        return self._gemm(cols)

    def init_kwargs(self) -> dict:
        """JSON-serialisable constructor arguments: ``QuantConv2d(**m.init_kwargs())`` is an empty twin."""
        return {**self.geometry_kwargs(), "bias": self.bias is not None, "mode": self.mode,
                "act_symmetric": self.act_symmetric, "group_size": self.group_size}

    def extra_repr(self) -> str:
        s = self.geometry_repr()
        s += f", bias={self.bias is not None}, mode={self.mode}, bits={self.bits}, weight={self.granularity()}"
        if self.mode == W8A8:
            s += f", act=per_token_{'symmetric' if self.act_symmetric else 'asymmetric'}"
        return s
