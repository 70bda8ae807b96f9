"""Sparsity schedules: one-shot, and cubic growth over training steps (Zhu & Gupta, 2017).

Invariants: a schedule is a frozen dataclass mapping a step index to a target sparsity (or None
before pruning starts); the target never decreases with the step and equals the final sparsity
from the last pruning step on. ``PruningScheduler`` is the object a user calls inside their own
training loop; every call re-applies the masks, and a call whose step reaches a new target
re-prunes with the same config at that target (pruned weights stay pruned: see ``prune_``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn


@dataclass(frozen=True)
class OneShot:
    """Prune straight to the final sparsity at ``step`` (default: the first call)."""

    step: int = 0

    def __post_init__(self):
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"OneShot.step must be an int >= 0, got {self.step!r}")

    def sparsity_at(self, step: int, final: float) -> Optional[float]:
        """Target sparsity at ``step``; None before the pruning step."""
        return None if step < self.step else final


@dataclass(frozen=True)
class CubicSchedule:
    """Cubic sparsity growth: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3.

    Pruning happens at t = t0, t0 + dt, ..., t0 + n*dt = end_step (dt = ``frequency``); between
    those steps the target of the last pruning step holds. Targets reached only through an
    interrupted run (a skipped step) are caught up at the next call.

    Args:
        end_step: t0 + n*dt, the step at which the final sparsity is reached (> begin_step).
        initial_sparsity: s_i, the target at begin_step, in [0, final sparsity].
        begin_step: t0 (>= 0).
        frequency: dt, steps between two pruning steps (>= 1; need not divide the span: the last
            pruning step is end_step itself).
    """

    end_step: int
    initial_sparsity: float = 0.0
    begin_step: int = 0
    frequency: int = 1

    def __post_init__(self):
        for name in ("end_step", "begin_step", "frequency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"CubicSchedule.{name} must be an int, got {v!r}")
        if self.begin_step < 0:
            raise ValueError(f"CubicSchedule.begin_step must be >= 0, got {self.begin_step}")
        if self.end_step <= self.begin_step:
            raise ValueError(
                f"CubicSchedule.end_step ({self.end_step}) must be > begin_step ({self.begin_step})"
            )
        if self.frequency < 1:
            raise ValueError(f"CubicSchedule.frequency must be >= 1, got {self.frequency}")
        s = self.initial_sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s < 1.0):
            raise ValueError(f"CubicSchedule.initial_sparsity must be in [0, 1), got {s!r}")

    def sparsity_at(self, step: int, final: float) -> Optional[float]:
        """Target sparsity at ``step`` for final sparsity ``final``; None before begin_step."""
        if step < self.begin_step:
            return None
        if step >= self.end_step:
            return final
        # Snap to the last pruning step at or before `step`.
        t = self.begin_step + ((step - self.begin_step) // self.frequency) * self.frequency
        frac = (t - self.begin_step) / (self.end_step - self.begin_step)
        return final + (self.initial_sparsity - final) * (1.0 - frac) ** 3


class PruningScheduler:
    """Gradual pruning inside the user's training loop.

    Usage::

        sched = PruningScheduler(PruneConfig(sparsity=0.9, schedule=CubicSchedule(end_step=1000)))
        for batch in loader:
            loss = ...; loss.backward(); opt.step(); opt.zero_grad()
            sched.step(model)

    Each ``step(model)`` advances the step counter by one; when the schedule's target differs from
    the last target applied, the model is re-pruned with the same config at the new target
    (``prune_`` keeps already pruned weights pruned). Every call also re-applies the masks, so an
    optimizer's momentum cannot leave pruned weights non-zero between steps.

    Args:
        config: the PruneConfig; ``config.schedule`` gives the targets, ``config.sparsity`` the final.
        filter_fn: as for ``prune_``.
    """

    def __init__(self, config, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None):
        from fastq.pruning.config import PruneConfig

        if not isinstance(config, PruneConfig):
            raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}")
        self.config = config
        self.filter_fn = filter_fn
        self.step_count = 0  # index of the next step
        self.current_sparsity: Optional[float] = None  # last target applied

    def sparsity_at(self, step: int) -> Optional[float]:
        """The schedule's target at ``step`` (None before pruning starts).

        For the threshold criterion (no sparsity) the target is reported as 1.0 from the pruning
        step on; the threshold itself decides the mask.
        """
        final = self.config.final_sparsity
        return self.config.schedule.sparsity_at(step, 1.0 if final is None else final)

    def step(self, model: nn.Module, *, batch: Any = None, loss_fn: Optional[Callable] = None):
        """Advance one step; re-prune if the target changed. Returns the PruneReport or None."""
        from fastq.pruning.masks import apply_masks_
        from fastq.pruning.prune import prune_

        target = self.sparsity_at(self.step_count)
        self.step_count += 1
        if target is None or (
            self.current_sparsity is not None and math.isclose(target, self.current_sparsity, abs_tol=1e-12)
        ):
            apply_masks_(model)
            return None
        fixed = self.config.is_nm or self.config.criterion == "threshold"
        cfg = self.config if fixed else dataclasses.replace(self.config, sparsity=target, schedule=OneShot())
        report = prune_(model, cfg, self.filter_fn, batch=batch, loss_fn=loss_fn)
        self.current_sparsity = target
        return report

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "current_sparsity": self.current_sparsity}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.current_sparsity = state["current_sparsity"]
