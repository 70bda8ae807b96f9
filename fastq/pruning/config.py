"""PruneConfig and the sparsity patterns it names.

Invariants: a PruneConfig is frozen and valid once constructed (every field checked in
``__post_init__`` with a message saying what to pass instead); ``pattern`` is stored in its
canonical string form ("unstructured", "N:M", "blockRxC", "channels"), which is also the value of
the ``fastq_prune_pattern`` attribute on pruned modules. Patterns see a weight as 2-D
[out, K] with K = in_features (Linear) or in_channels/groups * kh * kw (Conv2d); N:M groups run
along K, blocks are R rows (outputs) by C columns (inputs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from fastq.pruning.schedule import CubicSchedule, OneShot

CRITERIA = ("magnitude", "l2", "threshold", "random", "taylor", "wanda", "sparsegpt")
SCOPES = ("layer", "global")
# Activation-aware criteria: they read the input statistics fastq.quantization.observe_inputs records,
# rank weights within each output row, and support the element patterns only.
ACTIVATION_CRITERIA = ("wanda", "sparsegpt")


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern. kind is "unstructured", "nm", "block" or "channels"."""

    kind: str
    n: int = 1
    m: int = 1
    rows: int = 1
    cols: int = 1

    @property
    def name(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block{self.rows}x{self.cols}"
        return self.kind


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^\s*block\s*(\d+)\s*x\s*(\d+)\s*$")


def parse_pattern(pattern: Union[str, tuple]) -> Pattern:
    """Parse "unstructured", "2:4", "block4x4", (4, 4) or "channels" into a Pattern."""
    if isinstance(pattern, (tuple, list)):
        if len(pattern) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pattern):
            raise ValueError(f"a block pattern is a pair of ints (rows, cols) such as (4, 4), got {pattern!r}")
        rows, cols = pattern
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ValueError(f"block ({rows}, {cols}) must have rows, cols >= 1 and at least 2 elements")
        return Pattern("block", rows=rows, cols=cols)
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str or a (rows, cols) tuple, got {type(pattern).__name__}")
    p = pattern.strip().lower()
    if p in ("unstructured", "channels"):
        return Pattern(p)
    mt = _NM.match(p)
    if mt:
        n, m = int(mt.group(1)), int(mt.group(2))
        if not (0 < n < m):
            raise ValueError(f"N:M pattern {pattern!r} needs 0 < N < M (e.g. '2:4' or '4:8')")
        return Pattern("nm", n=n, m=m)
    mt = _BLOCK.match(p)
    if mt:
        return parse_pattern((int(mt.group(1)), int(mt.group(2))))
    raise ValueError(
        f"unknown pattern {pattern!r}: use 'unstructured', an N:M string such as '2:4' or '4:8', "
        f"a block such as (4, 4) or 'block1x4', or 'channels'"
    )


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    Args:
        sparsity: fraction of weights (unstructured), blocks, or output channels to remove, in
            [0, 1). Required except for N:M (implied 1 - N/M; if given it must equal that) and for
            the threshold criterion (must be None: the threshold fixes the mask).
        pattern: "unstructured"; "N:M" along the input dim ("2:4", "4:8"); a block (R, C) or
            "blockRxC" (R output rows by C input columns, e.g. (1, 4), (4, 4), (8, 1)); or
            "channels" (whole output rows; ``prune_channels_`` shrinks layers physically).
        criterion: importance score, see ``fastq.pruning.scores``: "magnitude" (L1), "l2",
            "threshold" (|w| < threshold pruned, unstructured only), "random" (seeded) or
            "taylor" (|w * grad|, needs batch + loss_fn); or, activation-aware, for nn.Linear
            layers whose inputs were recorded by running calibration batches inside
            ``fastq.quantization.observe_inputs(model)`` (``hessian=True`` for sparsegpt):
            "wanda" (|w_ij| * sqrt(mean x_j^2), Sun et al. 2023) or "sparsegpt" (Frantar &
            Alistarh 2023: the mask chosen block by block by w^2 / [H^-1]_jj^2 and each pruned
            weight's error spread over the not-yet-pruned columns through the inverse input
            Hessian, as GPTQ does for rounding). Unlike every other criterion, **sparsegpt also
            changes the kept weights** (it reconstructs the layer output X W^T). Both rank within
            each output row (unstructured: every row reaches the sparsity) or N:M group, take
            pattern "unstructured" or "N:M" and scope "layer"; sparsegpt is one-shot only.
        scope: "layer" (each layer reaches the sparsity) or "global" (one ranking, so one
            threshold, across all chosen layers; not for N:M).
        threshold: the cut for criterion "threshold" (>= 0).
        seed: seed for criterion "random".
        schedule: OneShot() or CubicSchedule(...), used by ``PruningScheduler``; ``prune_`` itself
            always prunes to ``sparsity``.
    """

    sparsity: Optional[float] = None
    pattern: Union[str, tuple] = "unstructured"
    criterion: str = "magnitude"
    scope: str = "layer"
    threshold: Optional[float] = None
    seed: int = 0
    schedule: Union[OneShot, CubicSchedule] = field(default_factory=OneShot)

    def __post_init__(self):
        pat = parse_pattern(self.pattern)
        object.__setattr__(self, "pattern", pat.name)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.schedule, (OneShot, CubicSchedule)):
            raise TypeError(f"schedule must be OneShot() or CubicSchedule(...), got {type(self.schedule).__name__}")
        if self.sparsity is not None:
            s = self.sparsity
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not (0.0 <= s < 1.0):
                raise ValueError(
                    f"sparsity must be a number in [0, 1) (the fraction removed; 1.0 would remove "
                    f"everything), got {s!r}"
                )

        if self.criterion == "threshold":
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise ValueError(f"criterion 'threshold' needs threshold= a finite number >= 0, got {t!r}")
            if self.sparsity is not None:
                raise ValueError("criterion 'threshold' fixes the mask itself; leave sparsity=None")
            if pat.kind != "unstructured":
                raise ValueError(f"criterion 'threshold' only works with pattern 'unstructured', got {pat.name!r}")
            if not isinstance(self.schedule, OneShot):
                raise ValueError("criterion 'threshold' has no sparsity to grow; use schedule=OneShot()")
            return
        if self.threshold is not None:
            raise ValueError(f"threshold= is only used by criterion 'threshold' (criterion is {self.criterion!r})")
        if self.criterion in ACTIVATION_CRITERIA:
            if pat.kind not in ("unstructured", "nm"):
                raise ValueError(
                    f"criterion {self.criterion!r} prunes single weights: use pattern 'unstructured' or an N:M "
                    f"pattern such as '2:4', got {pat.name!r}"
                )
            if self.scope != "layer":
                raise ValueError(
                    f"criterion {self.criterion!r} compares weights within each output row (its scores are "
                    f"not comparable across layers); use scope='layer'"
                )
            if self.criterion == "sparsegpt" and not isinstance(self.schedule, OneShot):
                raise ValueError("criterion 'sparsegpt' reconstructs the layer once; use schedule=OneShot()")

        if pat.kind == "nm":
            implied = 1.0 - pat.n / pat.m
            if self.sparsity is not None and not math.isclose(self.sparsity, implied, abs_tol=1e-9):
                raise ValueError(
                    f"pattern {pat.name!r} fixes sparsity at {implied:g}; got sparsity={self.sparsity!r} "
                    f"(leave sparsity=None)"
                )
            if self.scope != "layer":
                raise ValueError(f"pattern {pat.name!r} is per group of {pat.m}; scope must be 'layer'")
            if not isinstance(self.schedule, OneShot):
                raise ValueError(f"pattern {pat.name!r} cannot grow gradually; use schedule=OneShot()")
            return
        if self.sparsity is None:
            raise ValueError(f"sparsity is required for pattern {pat.name!r} (a number in [0, 1))")
        if isinstance(self.schedule, CubicSchedule) and self.schedule.initial_sparsity > self.sparsity:
            raise ValueError(
                f"CubicSchedule.initial_sparsity ({self.schedule.initial_sparsity}) must be <= sparsity "
                f"({self.sparsity})"
            )

    @property
    def pattern_spec(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def is_nm(self) -> bool:
        return self.pattern_spec.kind == "nm"

    @property
    def final_sparsity(self) -> Optional[float]:
        """The sparsity prune_ aims for (None for the threshold criterion)."""
        p = self.pattern_spec
        if p.kind == "nm":
            return 1.0 - p.n / p.m
        return None if self.sparsity is None else float(self.sparsity)
