"""fastq.nn: the modules ``quantize_`` and ``sparsify_`` swap in (plain modules with compressed buffers).

Save/load contract (``fastq.save``/``fastq.load`` rely on it): every class in ``MODULE_TYPES`` has
``init_kwargs() -> dict`` of JSON-serialisable constructor arguments, and ``cls(**init_kwargs)``
builds an empty module whose buffers have the saved shapes and dtypes, so ``load_state_dict`` fills
it. Each also has ``weight_bytes()`` and ``float_weight_bytes()`` (used by ``fastq.summary``).
"""

from fastq.nn._base import MODES, UnsupportedLayerError, quantize_weight
from fastq.nn.conv import QuantConv2d
from fastq.nn.linear import QuantLinear
from fastq.nn.sparse import SparseLinear
from fastq.nn.sparse_conv import SparseConv2d

# class name -> class, for rebuilding saved models.
MODULE_TYPES: dict = {"QuantLinear": QuantLinear, "QuantConv2d": QuantConv2d, "SparseLinear": SparseLinear,
                      "SparseConv2d": SparseConv2d}

# ---- sub-8-bit integer weights ----
from fastq.nn.intx import IntxEmbedding, IntxLinear  # noqa: E402

MODULE_TYPES.update({"IntxLinear": IntxLinear, "IntxEmbedding": IntxEmbedding})

__all__ = ["IntxEmbedding", "IntxLinear"] + ["MODES", "MODULE_TYPES", "QuantConv2d", "QuantLinear", "SparseConv2d", "SparseLinear", "UnsupportedLayerError", "quantize_weight"]
