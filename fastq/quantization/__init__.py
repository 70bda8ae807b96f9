"""fastq.quantization: configs, ``quantize_`` (in place, handler registry by config and module type) and ``summary``."""

from fastq.quantization.api import SKIP_ATTR, config_types, handler_for, quantize_, register_handler
from fastq.quantization.configs import Int8DynamicConfig, Int8WeightOnlyConfig
from fastq.quantization.summary import LayerInfo, Summary, summary

__all__ = ["Int8DynamicConfig", "Int8WeightOnlyConfig", "LayerInfo", "SKIP_ATTR", "Summary", "config_types", "handler_for",
           "quantize_", "register_handler", "summary"]

# ---- codebooks: weight sharing, binary, ternary, power of two (registers their handlers) ----
from fastq.quantization.codebook import (BinaryConfig, PowerOfTwoConfig, TernaryConfig,  # noqa: E402
                                         WeightSharingConfig)

__all__ += ["BinaryConfig", "PowerOfTwoConfig", "TernaryConfig", "WeightSharingConfig"]
