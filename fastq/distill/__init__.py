"""fastq.distill: distillation losses (pure functions) and ``distill_``, a small trainer.

Typical use is recovery after pruning: ``student = copy.deepcopy(model); fastq.prune_(student,
...); fastq.distill_(student, model, batches, loss="cosine", steps=200, lr=1e-4, embed_fn=...)``.
"""

from fastq.distill.losses import LOSSES, cosine_embedding_loss, kl_div_loss, mse_loss
from fastq.distill.trainer import DistillConfig, DistillHistory, default_forward, distill_

__all__ = [
    "LOSSES",
    "DistillConfig",
    "DistillHistory",
    "cosine_embedding_loss",
    "default_forward",
    "distill_",
    "kl_div_loss",
    "mse_loss",
]
