"""Learning-rate schedules as pure functions of the step (no scheduler state to save or resume).

Invariant: ``lr_factor(step, ...)`` is the multiplier of the base learning rate used for optimizer
step ``step`` (0-based); it depends on nothing else, so a resumed run sets exactly the rates an
uninterrupted run would. Warm-up rises linearly to 1 over ``warmup_steps`` steps (step 0 already
trains, at ``1 / warmup_steps``); the decay then runs over the remaining steps.
"""

from __future__ import annotations

import math
from typing import Optional

SCHEDULES = ("constant", "cosine", "linear", "step")


def lr_factor(step: int, steps: int, schedule: str = "constant", warmup_steps: int = 0, min_lr_ratio: float = 0.0,
              step_size: Optional[int] = None, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``steps``.

    Args:
        schedule: "constant"; "cosine" (half a cosine from 1 down to ``min_lr_ratio`` at the last
            step); "linear" (straight down to ``min_lr_ratio``); "step" (times ``gamma`` every
            ``step_size`` steps after warm-up).
        warmup_steps: linear warm-up steps before the schedule (0: none).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    s = step - warmup_steps
    span = max(1, steps - warmup_steps - 1)  # the last step reaches the floor exactly
    p = min(1.0, s / span)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - p)
    return gamma ** (s // step_size)
