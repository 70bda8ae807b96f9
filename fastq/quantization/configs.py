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


# ---- sub-8-bit integer weights (intx: fastq.nn.IntxLinear / IntxEmbedding) -----------------------
# Weight clipping is off by default: measured on MiniLM and SmolLM2 (README, "Sub-8-bit weights"),
# it did not win by enough to turn on for everyone (see the README for the numbers).
DEFAULT_INTX_CLIP: Optional[str] = None
CLIP_MODES = (None, "weight", "output")


def _check_intx(cls: str, bits: int, group_size: Optional[int], symmetric: bool, clip: Optional[str],
                fit_group_size: bool, gptq: bool) -> None:
    from fastq.ops.reference import INTX_BITS, intx_chunk_k

    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in INTX_BITS:
        raise ValueError(f"{cls}.bits must be an int in 2..8 (codes of 2 to 8 bits), got {bits!r}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ValueError(f"{cls}.group_size must be a positive int (e.g. 32, 64, 128, 256) or None for one "
                             f"scale per output channel, got {group_size!r}")
        chunk = intx_chunk_k(bits)
        if group_size % chunk:
            raise ValueError(f"{cls}.group_size must be a multiple of {chunk} for {bits}-bit codes (the packed "
                             f"layout's chunk), got {group_size}; 32, 64, 128 or 256 always work")
    if not isinstance(symmetric, bool):
        raise TypeError(f"{cls}.symmetric must be True or False, got {symmetric!r}")
    for name, flag in (("fit_group_size", fit_group_size), ("gptq", gptq)):
        if not isinstance(flag, bool):
            raise TypeError(f"{cls}.{name} must be True or False, got {flag!r}")
    if clip not in CLIP_MODES:
        raise ValueError(f"{cls}.clip must be None, 'weight' (per-group clip ratio minimizing the weight error) or "
                         f"'output' (minimizing the error weighted by observed inputs), got {clip!r}")


@dataclass(frozen=True)
class IntxWeightOnlyConfig:
    """Weight-only linears with ``bits``-bit integer weights (2..8), float activations.

    Args:
        bits: code width. 2 and 4 pack four and two codes per byte, 3 uses 4-bit slots, 5..8 one
            byte per code; every width runs on the native kernels of its slot.
        group_size: inputs sharing a scale (and zero point), e.g. 32, 64, 128, 256 (a multiple of
            16 for 2 bits, of 8 for 3-4 bits, of 4 otherwise); None for one per output channel.
            Layers whose K it does not divide are skipped with a note.
        symmetric: no zero point (codes centred on 2^(bits-1)); False adds a per-group zero point.
        clip: None; "weight": per group, the clip ratio in [0.5, 1] that minimizes the weight's
            squared reconstruction error; "output": the same weighted by each input feature's mean
            squared activation, recorded beforehand with ``fastq.quantization.observe_inputs``
            (layers without observations fall back to "weight").
        fit_group_size: for a layer whose K the group size does not divide (SmolLM2's K = 576 and
            groups of 128, say), use the largest smaller group size that divides K and suits the
            packed layout (96 there; ``summary`` shows it). False skips such layers with a note.
        gptq: choose the codes with GPTQ (each rounding error compensated through the inputs'
            Hessian, recorded beforehand with ``observe_inputs(model, hessian=True)``) instead of
            rounding to nearest; layers without observations are rounded to nearest.
    """

    bits: int = 4
    group_size: Optional[int] = 128
    symmetric: bool = True
    clip: Optional[str] = DEFAULT_INTX_CLIP
    fit_group_size: bool = True
    gptq: bool = False
    mode = "weight_only"

    def __post_init__(self) -> None:
        _check_intx(type(self).__name__, self.bits, self.group_size, self.symmetric, self.clip, self.fit_group_size,
                    self.gptq)


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """int4 weight-only linears: ``IntxWeightOnlyConfig(bits=4)`` (see there for the arguments)."""

    group_size: Optional[int] = 128
    symmetric: bool = True
    clip: Optional[str] = DEFAULT_INTX_CLIP
    fit_group_size: bool = True
    gptq: bool = False
    bits = 4
    mode = "weight_only"

    def __post_init__(self) -> None:
        _check_intx(type(self).__name__, self.bits, self.group_size, self.symmetric, self.clip, self.fit_group_size,
                    self.gptq)


@dataclass(frozen=True)
class Int4DynamicConfig:
    """W4A8: int4 weights (grouped) x int8 activations quantized per token at run time, on the
    integer dot-product units (VNNI), with the group scales applied in the epilogue. Arguments as
    ``Int4WeightOnlyConfig``."""

    group_size: Optional[int] = 128
    symmetric: bool = True
    clip: Optional[str] = DEFAULT_INTX_CLIP
    fit_group_size: bool = True
    gptq: bool = False
    bits = 4
    mode = "dynamic"

    def __post_init__(self) -> None:
        _check_intx(type(self).__name__, self.bits, self.group_size, self.symmetric, self.clip, self.fit_group_size,
                    self.gptq)


@dataclass(frozen=True)
class IntxEmbeddingConfig:
    """``nn.Embedding`` -> ``IntxEmbedding``: rows stored as ``bits``-bit codes with a scale per row
    (``group_size=None``) or per group of the embedding dimension. An ``nn.Linear`` sharing the
    embedding's weight (a tied LM head) becomes a weight-only ``IntxLinear`` over the very same
    packed buffer: quantized once, tied in memory and in saved files. Quantize embeddings before
    the linear layers (a linear config converts a tied head on its own, as an untied copy)."""

    bits: int = 8
    group_size: Optional[int] = None
    symmetric: bool = True
    fit_group_size: bool = True

    def __post_init__(self) -> None:
        _check_intx(type(self).__name__, self.bits, self.group_size, self.symmetric, None, self.fit_group_size, False)
