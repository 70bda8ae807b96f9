"""SmoothedLinear: a linear layer whose input is divided by per-channel SmoothQuant factors.

SmoothQuant moves activation outliers into the weights: ``x @ W.T == (x / s) @ (W * s).T``. When
the division cannot be folded into the operation that produces x (``fastq.smooth_quant_`` tries
that first), the layer keeps ``s`` here. Invariants:
  * ``forward(x) = self.linear(x / smooth)`` with ``smooth`` a float32 [K] buffer of finite
    positive factors, cast to x's dtype; ``self.linear``'s weight already holds ``W * s``.
  * ``self.linear`` is a plain child module (an nn.Linear, or whatever ``quantize_`` /
    ``prepare_qat_`` swapped in), so every config handles it; ``Int8StaticConfig`` instead replaces
    the whole wrapper and fuses the division into its kernel's quantization step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmoothedLinear(nn.Module):
    """``y = linear(x / smooth)``.

    Args:
        in_features, out_features, bias: of the wrapped ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.linear = nn.Linear(self.in_features, self.out_features, bias=bool(bias))
        self.register_buffer("smooth", torch.ones(self.in_features, dtype=torch.float32))

    @classmethod
    def wrap(cls, linear: nn.Linear, smooth: Tensor) -> "SmoothedLinear":
        """Wrap ``linear`` (used as is: its weight must already be multiplied by ``smooth``)."""
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        m.linear = linear
        m.smooth = smooth.detach().to(device=linear.weight.device, dtype=torch.float32).clone()
        return m

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x / self.smooth.to(x.dtype))

    def _apply(self, fn, recurse=True):
        smooth = self.smooth  # dtype casts of the model keep the factors float32
        super()._apply(fn, recurse)
        self.smooth = smooth.to(self.smooth.device)
        return self

    def weight_shape(self) -> tuple:
        """[out, in]: the shape of the float weight this layer replaced (fastq.load checks it)."""
        return (self.out_features, self.in_features)

    def init_kwargs(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": getattr(self.linear, "bias", None) is not None}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, smooth=[{self.in_features}]"
