"""fastq: PyTorch model compression with native int8 and sparse kernels.

The public surface: ops (``fastq.ops``), native status (``fastq.kernel_for``, ``fastq.cpu_isa``,
``fastq.set_cpu_isa``) and, as they land, the model-level API (quantize_, prune_, save/load).
"""

from fastq import _native
from fastq._native import cpu_isa, detected_cpu_isa, native_calls, set_cpu_isa
from fastq.ops import PER_ROW, PER_TENSOR, QuantizedInt8, dequantize_int8, kernel_for, quantize_int8

__version__ = "0.1.0"

__all__ = [
    "PER_ROW",
    "PER_TENSOR",
    "QuantizedInt8",
    "__version__",
    "cpu_isa",
    "dequantize_int8",
    "detected_cpu_isa",
    "kernel_for",
    "native_calls",
    "quantize_int8",
    "set_cpu_isa",
]


def native_available() -> bool:
    """True when the compiled extension ``fastq._C`` is loaded."""
    return _native.available()


# --- pruning (branch `pruning`): prune_, PruneConfig, prune_channels_ ---
from fastq import pruning  # noqa: E402
from fastq.pruning import PruneConfig, prune_, prune_channels_  # noqa: E402

__all__ += ["PruneConfig", "prune_", "prune_channels_", "pruning"]

# ---- sparse (sparsify_, SparseLinear) ----
from fastq.nn.sparse import SparseLinear  # noqa: E402
from fastq.sparsify import sparsify_  # noqa: E402

__all__ += ["SparseLinear", "sparsify_"]

# ---- modules and quantization API (branch modules) ----------------------------------------------
from fastq import nn  # noqa: E402
from fastq.quantization import Int8DynamicConfig, Int8WeightOnlyConfig, quantize_, summary  # noqa: E402

__all__ += ["Int8DynamicConfig", "Int8WeightOnlyConfig", "nn", "quantize_", "summary"]

# ---- distillation (branch recovery): distill_ ----
from fastq import distill  # noqa: E402
from fastq.distill import distill_  # noqa: E402

__all__ += ["distill", "distill_"]
