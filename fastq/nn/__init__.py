"""fastq.nn: the modules ``quantize_`` swaps in (plain modules with int8 buffers and float32 scales).

Save/load contract (``fastq.save``/``fastq.load`` rely on it): every class in ``MODULE_TYPES`` has
``init_kwargs() -> dict`` of JSON-serialisable constructor arguments, and ``cls(**init_kwargs)``
builds an empty module whose buffers have the saved shapes and dtypes, so ``load_state_dict`` fills
it. Each also has ``weight_bytes()`` and ``float_weight_bytes()`` (used by ``fastq.summary``).
"""

from fastq.nn._base import MODES, UnsupportedLayerError, quantize_weight
from fastq.nn.conv import QuantConv2d
from fastq.nn.linear import QuantLinear

# class name -> class, for rebuilding saved models.
MODULE_TYPES: dict = {"QuantLinear": QuantLinear, "QuantConv2d": QuantConv2d}

__all__ = ["MODES", "MODULE_TYPES", "QuantConv2d", "QuantLinear", "UnsupportedLayerError", "quantize_weight"]

# ---- sparse (branch sparse): SparseLinear, swapped in by fastq.sparsify_ ----
from fastq.nn.sparse import SparseLinear  # noqa: E402

__all__ += ["SparseLinear"]
