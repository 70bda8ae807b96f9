"""fastq: PyTorch model compression with native int8 and sparse kernels.

The public surface: ops (``fastq.ops``: quantize_int8, dequantize_int8, the int8 GEMM family),
native status (``kernel_for``, ``cpu_isa``, ``set_cpu_isa``, ``native_calls``), quantization
(``quantize_`` with ``Int8DynamicConfig`` / ``Int8WeightOnlyConfig``, ``summary``), pruning
(``prune_``, ``PruneConfig``, ``prune_channels_``, ``sparsify_``), distillation (``distill_``), deployment (``save`` / ``load``), compression
search (``search``, ``LayerRecipe``, ``fastq.recipe_search``) and training (``train_``, ``TrainConfig``).
"""

from fastq import _native
from fastq._native import cpu_isa, detected_cpu_isa, native_calls, set_cpu_isa
from fastq.ops import PER_ROW, PER_TENSOR, QuantizedInt8, dequantize_int8, kernel_for, quantize_int8

__version__ = "0.1.0"

from fastq import distill, nn, pruning  # noqa: E402
from fastq.distill import distill_  # noqa: E402
from fastq.io import LoadError, load, save  # noqa: E402
from fastq.pruning import PruneConfig, prune_, prune_channels_  # noqa: E402
from fastq.nn import SparseConv2d, SparseLinear  # noqa: E402
from fastq.quantization import Int8DynamicConfig, Int8WeightOnlyConfig, quantize_, summary  # noqa: E402
from fastq.sparsify import sparsify_  # noqa: E402
from fastq.nn import fuse_activations_  # noqa: E402
from fastq.quantization import (Int4DynamicConfig, Int4WeightOnlyConfig, IntxEmbeddingConfig,  # noqa: E402
                                IntxWeightOnlyConfig)

# ---- compression search and training (issue 14) ----
from fastq import recipe_search, train  # noqa: E402
from fastq.recipe_search import LayerRecipe, search  # noqa: E402
from fastq.train import TrainConfig, train_  # noqa: E402
# ---- end compression search and training ----

__all__ = [
    "Int4DynamicConfig",
    "Int4WeightOnlyConfig",
    "IntxEmbeddingConfig",
    "IntxWeightOnlyConfig",
    "Int8DynamicConfig",
    "Int8WeightOnlyConfig",
    "LoadError",
    "PER_ROW",
    "PER_TENSOR",
    "PruneConfig",
    "QuantizedInt8",
    "__version__",
    "cpu_isa",
    "dequantize_int8",
    "distill",
    "distill_",
    "fuse_activations_",
    "detected_cpu_isa",
    "kernel_for",
    "load",
    "native_available",
    "native_calls",
    "nn",
    "prune_",
    "prune_channels_",
    "pruning",
    "quantize_",
    "quantize_int8",
    "save",
    "SparseConv2d",
    "SparseLinear",
    "sparsify_",
    "set_cpu_isa",
    "summary",
    # compression search and training (issue 14)
    "LayerRecipe",
    "TrainConfig",
    "recipe_search",
    "search",
    "train",
    "train_",
]


# ---- codebooks: weight sharing, binary, ternary, power of two ----
from fastq.nn import SharedWeightConv2d, SharedWeightLinear, train_centroids_  # noqa: E402
from fastq.quantization import BinaryConfig, PowerOfTwoConfig, TernaryConfig, WeightSharingConfig  # noqa: E402

__all__ += ["BinaryConfig", "PowerOfTwoConfig", "SharedWeightConv2d", "SharedWeightLinear", "TernaryConfig",
            "WeightSharingConfig", "train_centroids_"]


def native_available() -> bool:
    """True when the compiled extension ``fastq._C`` is loaded."""
    return _native.available()


# ---- accuracy toolkit: calibration, static W8A8, SmoothQuant, QAT, half-precision weights ----
from fastq.quantization import (  # noqa: E402
    BFloat16Config, CalibrationError, Float16Config, Int8StaticConfig, calibrate, convert_, prepare_qat_,
    smooth_quant_)

__all__ += ["BFloat16Config", "CalibrationError", "Float16Config", "Int8StaticConfig", "calibrate", "convert_",
            "prepare_qat_", "smooth_quant_"]
