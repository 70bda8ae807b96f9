"""Quantization configs: frozen dataclasses that validate themselves on construction.

Invariant: a config that constructs is one every handler understands; impossible values raise
here with a message saying what to pass instead. Layer-dependent limits (a group size that does
not divide a layer's K) are judged per layer by ``quantize_``, which skips and notes such layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ACT_GRANULARITIES = ("per_token",)
WEIGHT_GRANULARITIES = ("per_channel",)


@dataclass(frozen=True)
class Int8DynamicConfig:
    """W8A8: int8 activations quantized per token at run time, int8 weights per output channel.

    Args:
        act_symmetric: True: int8 activations in [-127, 127] with one scale per token. False:
            uint8 activations with a per-token scale and zero point, which spends all 256 codes on
            one-sided inputs (GELU/ReLU outputs) and so halves their rounding error.
        act_granularity: only "per_token" (per-tensor activation scales lose too much accuracy on
            transformer activations with outlier tokens).
        weight_granularity: only "per_channel" (symmetric, one scale per output channel: the scale
            that the fused GEMM epilogue multiplies in).
    """

    act_symmetric: bool = True
    act_granularity: str = "per_token"
    weight_granularity: str = "per_channel"

    def __post_init__(self) -> None:
        if not isinstance(self.act_symmetric, bool):
            raise TypeError(f"Int8DynamicConfig.act_symmetric must be True or False, got {self.act_symmetric!r}")
        if self.act_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"Int8DynamicConfig.act_granularity {self.act_granularity!r} is not supported; "
                             f"use one of {ACT_GRANULARITIES}")
        if self.weight_granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(f"Int8DynamicConfig.weight_granularity {self.weight_granularity!r} is not supported; "
                             f"use one of {WEIGHT_GRANULARITIES} (for per-group weights use "
                             "Int8WeightOnlyConfig(group_size=...))")


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """int8 weights (symmetric), float activations: the bandwidth-bound decode path.

    Args:
        group_size: None for one scale per output channel; otherwise the number of consecutive
            input features sharing a scale (e.g. 32, 64, 128). Layers whose K it does not divide
            are skipped by ``quantize_`` with a note.
    """

    group_size: Optional[int] = None

    def __post_init__(self) -> None:
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int)):
            raise TypeError(f"Int8WeightOnlyConfig.group_size must be a positive int or None (per channel), got {g!r}")
        if g is not None and g <= 0:
            raise ValueError(f"Int8WeightOnlyConfig.group_size must be positive (e.g. 32, 64, 128) or None for "
                             f"per-channel scales, got {g}")

    @property
    def granularity(self) -> str:
        return "per_channel" if self.group_size is None else f"group{self.group_size}"
