"""fastq.pruning: mask-based pruning (prune_), structured shrinking (prune_channels_), schedules.

Importance scores live in ``fastq.pruning.scores``, separate from the algorithms. After
``prune_`` every pruned nn.Linear / nn.Conv2d has a persistent bool buffer ``weight_mask``
(True = kept) and a ``fastq_prune_pattern`` str; ``remove_masks`` makes pruning permanent.
"""

from fastq.pruning import scores
from fastq.pruning.config import CRITERIA, SCOPES, Pattern, PruneConfig, parse_pattern
from fastq.pruning.masks import apply_masks_, attach_mask_, is_pruned, remove_masks
from fastq.pruning.prune import LayerReport, PruneReport, prune_
from fastq.pruning.schedule import CubicSchedule, OneShot, PruningScheduler
from fastq.pruning.structured import Pair, StructuredReport, find_pairs, prune_channels_

__all__ = [
    "CRITERIA",
    "SCOPES",
    "CubicSchedule",
    "LayerReport",
    "OneShot",
    "Pair",
    "Pattern",
    "PruneConfig",
    "PruneReport",
    "PruningScheduler",
    "StructuredReport",
    "apply_masks_",
    "attach_mask_",
    "find_pairs",
    "is_pruned",
    "parse_pattern",
    "prune_",
    "prune_channels_",
    "remove_masks",
    "scores",
]
