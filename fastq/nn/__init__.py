"""fastq.nn: modules the model-level APIs swap in."""

from fastq.nn.sparse import SparseLinear

__all__ = ["SparseLinear"]
