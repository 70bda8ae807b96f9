"""Float16Config / BFloat16Config: store Linear and Conv2d weights in half precision.

Invariant: the handlers are registered in the ``quantize_`` registry like every config (by config
type and exact module type); see ``fastq.nn.half`` for where the product runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fastq.nn.half import HalfConv2d, HalfLinear
from fastq.quantization.api import register_handler


@dataclass(frozen=True)
class Float16Config:
    """Weights stored as IEEE float16 (HalfLinear / HalfConv2d); computed in float32 on CPUs
    (no native fp16 dot products there), in float16 on CUDA. Finite weights beyond +-65504 would
    overflow: such layers are skipped with a note."""

    dtype = "float16"


@dataclass(frozen=True)
class BFloat16Config:
    """Weights stored as bfloat16 (HalfLinear / HalfConv2d); computed in bfloat16 with float32
    accumulation on CPUs with avx512_bf16 / AMX and on CUDA, in float32 elsewhere."""

    dtype = "bfloat16"


def _half_handler(cls):
    def handler(module: nn.Module, config) -> nn.Module:
        q = cls.from_float(module, config.dtype)
        if config.dtype == "float16" and not bool(q.weight.isfinite().all()):
            from fastq.nn._base import UnsupportedLayerError

            raise UnsupportedLayerError("weights beyond the float16 range (+-65504) would become Inf")
        return q

    return handler


for _config in (Float16Config, BFloat16Config):
    register_handler(_config, nn.Linear, _half_handler(HalfLinear))
    register_handler(_config, nn.Conv2d, _half_handler(HalfConv2d))
