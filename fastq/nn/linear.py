"""QuantLinear: an nn.Linear replacement that runs int8 GEMM kernels.

Invariants: see ``_base`` (three persistent buffers, shapes fixed by ``init_kwargs``; output dtype =
input dtype). Modes: "w8a8" quantizes activations per token at run time (symmetric int8 or
asymmetric uint8 + zero point) against per-channel symmetric int8 weights; "int8_weight_only"
keeps activations in float and dequantizes per-channel or per-group int8 weights in registers.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from fastq.nn._base import W8A8, Int8GemmModule, mode_args


class QuantLinear(Int8GemmModule):
    """``y = x @ W.T + b`` with an int8 weight.

    Args:
        in_features: K.
        out_features: N.
        bias: whether the layer has a float32 bias [N].
        mode: ``"w8a8"`` (dynamic int8 activations) or ``"int8_weight_only"``.
        act_symmetric: w8a8 only: symmetric int8 activations (True) or asymmetric uint8 with a
            per-token zero point (False; better for one-sided inputs such as GELU outputs).
        group_size: int8_weight_only only: None (per channel) or a positive divisor of K.
        activation: an activation applied to the output (``fastq.nn.activation.KINDS``; set by
            ``fuse_activations_``), or None.

    Shapes: input [*, K] float32/float16/bfloat16 -> output [*, N] in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = W8A8,
                 act_symmetric: bool = True, group_size: Optional[int] = None, activation: Optional[str] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_gemm(self.out_features, self.in_features, bool(bias), mode, act_symmetric, group_size)
        self._init_activation(activation)

    @classmethod
    def from_float(cls, module: nn.Linear, config) -> "QuantLinear":
        """Quantize an ``nn.Linear`` under an ``Int8DynamicConfig`` or ``Int8WeightOnlyConfig``.

        Raises:
            UnsupportedLayerError: the layer cannot be quantized (group size not dividing K, a
                weight with NaN/Inf).
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"QuantLinear.from_float expects an nn.Linear, got {type(module).__name__}")
        kwargs = mode_args(config)
        q = cls(module.in_features, module.out_features, module.bias is not None, **kwargs)
        q._set_weight(module.weight, module.bias)
        return q

    def _op_forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._describe()}: input of shape {tuple(x.shape)} does not end in "
                             f"in_features={self.in_features} (K mismatch)")
        return self._gemm(x)

    def init_kwargs(self) -> dict:
        """JSON-serialisable constructor arguments: ``QuantLinear(**m.init_kwargs())`` is an empty twin."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "mode": self.mode, "act_symmetric": self.act_symmetric, "group_size": self.group_size,
                **self._activation_kwargs()}

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
             f"mode={self.mode}, bits={self.bits}, weight={self.granularity()}")
        if self.mode == W8A8:
            s += f", act=per_token_{'symmetric' if self.act_symmetric else 'asymmetric'}"
        return s
