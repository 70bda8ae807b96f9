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


# ---- accuracy toolkit: observers, calibration, static W8A8, SmoothQuant, QAT, half precision ----
from fastq.quantization.calibrate import CalibrationError, LayerCalibration, calibrate, get_calibration  # noqa: E402
from fastq.quantization.half import BFloat16Config, Float16Config  # noqa: E402
from fastq.quantization.observers import OBSERVERS, make_observer  # noqa: E402
from fastq.quantization.qat import convert_, prepare_qat_, register_qat  # noqa: E402
from fastq.quantization.smoothquant import SmoothQuantError, SmoothQuantReport, smooth_quant_  # noqa: E402
from fastq.quantization.static import Int8StaticConfig  # noqa: E402

__all__ += ["BFloat16Config", "CalibrationError", "Float16Config", "Int8StaticConfig", "LayerCalibration", "OBSERVERS",
            "SmoothQuantError", "SmoothQuantReport", "calibrate", "convert_", "get_calibration", "make_observer",
            "prepare_qat_", "register_qat", "smooth_quant_"]

# ---- sub-8-bit integer weights ----
from fastq.quantization.api import QuantizeContext, current_context  # noqa: E402
from fastq.quantization.configs import (Int4DynamicConfig, Int4WeightOnlyConfig, IntxEmbeddingConfig,  # noqa: E402
                                        IntxWeightOnlyConfig)
from fastq.quantization.intx import intx_quantize, observe_inputs  # noqa: E402

__all__ += ["Int4DynamicConfig", "Int4WeightOnlyConfig", "IntxEmbeddingConfig", "IntxWeightOnlyConfig",
            "QuantizeContext", "current_context", "intx_quantize", "observe_inputs"]
