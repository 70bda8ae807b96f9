"""SparseConv2d: a pruned nn.Conv2d (groups=1) run by the sparse masked matmul kernels.

Invariants:
  * a convolution is one GEMM over ``F.unfold`` columns (``ConvGeometry``), so the pruned weight
    [O, C, kh, kw] is a SparseLinear's [O, C*kh*kw] weight: same formats, buffers, kernels and
    save/load contract (``SparseConv2d(**init_kwargs)`` is an empty twin that ``load_state_dict``
    fills); only the geometry is added.
  * the pruning mask contract is the Linear one (``weight_mask`` of the weight's shape, optional
    ``fastq_prune_pattern``); N:M and block patterns run along the flattened (c, i, j) K axis,
    which is the axis ``fastq.prune_`` groups them on.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fastq.nn._base import UnsupportedLayerError
from fastq.nn.conv import ConvGeometry
from fastq.nn.sparse import SparseLinear


class SparseConv2d(ConvGeometry, SparseLinear):
    """2-D convolution (groups=1) from a compressed pruned weight.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode: as
            ``nn.Conv2d`` (padding may be an int, a pair, "same" or "valid").
        **sparse_kwargs: the compressed format's arguments, as ``SparseLinear`` (format, entries, ...).

    Shapes: input [B, C, H, W] or [C, H, W] float32/bfloat16 (float16 runs in float32) ->
    [B, O, H', W'] (or [O, H', W']) in the input's dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", **sparse_kwargs) -> None:
        k = self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode)
        super().__init__(k, self.out_channels, bias, **sparse_kwargs)

    @classmethod
    def from_float(cls, module: nn.Conv2d, int8: bool = False, pattern: Optional[str] = None,
                   format: Optional[str] = None) -> "SparseConv2d":
        """Compress a pruned ``nn.Conv2d`` (groups=1) carrying a bool ``weight_mask``; int8, pattern
        and format as ``SparseLinear.from_float``.

        Raises:
            UnsupportedLayerError: grouped/depthwise convolution (``sparsify_`` leaves those masked).
        """
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"SparseConv2d.from_float takes an nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1:
            raise UnsupportedLayerError(f"grouped convolution (groups={module.groups}) is not supported")
        mask = getattr(module, "weight_mask", None)
        if mask is None:
            raise ValueError("SparseConv2d.from_float: the layer has no weight_mask buffer; prune it first "
                             "(fastq.prune_) or attach a bool weight_mask")
        o = module.out_channels
        # the same weight seen as the Linear it multiplies like (views: nothing dense is copied)
        as_linear = nn.Linear(1, 1, bias=module.bias is not None, device="meta")
        as_linear.in_features, as_linear.out_features = module.weight[0].numel(), o
        as_linear.weight = nn.Parameter(module.weight.detach().reshape(o, -1), requires_grad=False)
        if module.bias is not None:
            as_linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        as_linear.register_buffer("weight_mask", mask.reshape(o, -1))
        if pattern is None:
            pattern = getattr(module, "fastq_prune_pattern", None)
        flat = SparseLinear.from_float(as_linear, int8=int8, pattern=pattern, format=format)
        sparse_kwargs = {key: v for key, v in flat.init_kwargs().items()
                         if key not in ("in_features", "out_features", "bias")}
        out = cls(module.in_channels, o, module.kernel_size, module.stride, module.padding, module.dilation,
                  module.bias is not None, module.padding_mode, **sparse_kwargs).to(module.weight.device)
        out.load_state_dict(flat.state_dict())
        return out

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)  # before F.pad / F.unfold see it
        gemm = self._op_forward if torch.compiler.is_compiling() else self._run  # the plan: eager only
        return self._conv(x, gemm, f"{type(self).__name__}({self.extra_repr()})")

    def dense_weight(self) -> Tensor:
        """The float32 [O, C, kh, kw] weight this module multiplies by (dequantized for int8)."""
        return super().dense_weight().reshape(self.weight_shape())

    def init_kwargs(self) -> dict:
        flat = super().init_kwargs()
        del flat["in_features"], flat["out_features"]
        return {**self.geometry_kwargs(), **flat}

    def extra_repr(self) -> str:
        flat = super().extra_repr()
        return self.geometry_repr() + flat[flat.index(", bias="):]
