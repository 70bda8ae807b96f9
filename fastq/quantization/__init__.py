"""fastq.quantization: configs, ``quantize_`` (in place, handler registry by config and module type) and ``summary``."""

from fastq.quantization.api import SKIP_ATTR, config_types, handler_for, quantize_, register_handler
from fastq.quantization.configs import Int8DynamicConfig, Int8WeightOnlyConfig
from fastq.quantization.summary import LayerInfo, Summary, summary

__all__ = ["Int8DynamicConfig", "Int8WeightOnlyConfig", "LayerInfo", "SKIP_ATTR", "Summary", "config_types", "handler_for",
           "quantize_", "register_handler", "summary"]

# ---- sub-8-bit integer weights ----
from fastq.quantization.api import QuantizeContext, current_context  # noqa: E402
from fastq.quantization.configs import (Int4DynamicConfig, Int4WeightOnlyConfig, IntxEmbeddingConfig,  # noqa: E402
                                        IntxWeightOnlyConfig)
from fastq.quantization.intx import intx_quantize, observe_inputs  # noqa: E402

__all__ += ["Int4DynamicConfig", "Int4WeightOnlyConfig", "IntxEmbeddingConfig", "IntxWeightOnlyConfig",
            "QuantizeContext", "current_context", "intx_quantize", "observe_inputs"]
