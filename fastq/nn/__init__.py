"""fastq.nn: the modules ``quantize_`` and ``sparsify_`` swap in (plain modules with compressed buffers).

Save/load contract (``fastq.save``/``fastq.load`` rely on it): every class in ``MODULE_TYPES`` has
``init_kwargs() -> dict`` of JSON-serialisable constructor arguments, and ``cls(**init_kwargs)``
builds an empty module whose buffers have the saved shapes and dtypes, so ``load_state_dict`` fills
it. Each that stores a weight also has ``weight_bytes()`` and ``float_weight_bytes()`` (used by
``fastq.summary``; ``FusedActivation`` stores nothing).
"""

from fastq.nn._base import MODES, UnsupportedLayerError, quantize_weight
from fastq.nn.conv import QuantConv2d
from fastq.nn.linear import QuantLinear
from fastq.nn.sparse import SparseLinear
from fastq.nn.sparse_conv import SparseConv2d

# class name -> class, for rebuilding saved models.
MODULE_TYPES: dict = {"QuantLinear": QuantLinear, "QuantConv2d": QuantConv2d, "SparseLinear": SparseLinear,
                      "SparseConv2d": SparseConv2d}

__all__ = ["MODES", "MODULE_TYPES", "QuantConv2d", "QuantLinear", "SparseConv2d", "SparseLinear", "UnsupportedLayerError", "quantize_weight"]

# ---- codebook (weight sharing) layers ----
from fastq.nn.codebook import SharedWeightConv2d, SharedWeightLinear, train_centroids_  # noqa: E402

MODULE_TYPES.update({"SharedWeightLinear": SharedWeightLinear, "SharedWeightConv2d": SharedWeightConv2d})
__all__ += ["SharedWeightConv2d", "SharedWeightLinear", "train_centroids_"]


# ---- accuracy toolkit: static W8A8, SmoothQuant wrapper, half-precision weights ----
from fastq.nn.half import HalfConv2d, HalfLinear  # noqa: E402
from fastq.nn.smooth import SmoothedLinear  # noqa: E402
from fastq.nn.static import StaticQuantConv2d, StaticQuantLinear  # noqa: E402

MODULE_TYPES.update({"StaticQuantLinear": StaticQuantLinear, "StaticQuantConv2d": StaticQuantConv2d,
                     "SmoothedLinear": SmoothedLinear, "HalfLinear": HalfLinear, "HalfConv2d": HalfConv2d})
__all__ += ["HalfConv2d", "HalfLinear", "SmoothedLinear", "StaticQuantConv2d", "StaticQuantLinear"]

# ---- sub-8-bit integer weights ----
from fastq.nn.intx import IntxEmbedding, IntxLinear  # noqa: E402

MODULE_TYPES.update({"IntxLinear": IntxLinear, "IntxEmbedding": IntxEmbedding})

__all__ += ["IntxEmbedding", "IntxLinear"]

# ---- activations fused into the layer before them ----
from fastq.nn.activation import FusedActivation, fuse_activations_  # noqa: E402

MODULE_TYPES.update({"FusedActivation": FusedActivation})
__all__ += ["FusedActivation", "fuse_activations_"]
