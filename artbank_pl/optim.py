"""Learning-rate schedules."""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["cosine", "constant"]


def warmup_schedule_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: LRSchedule, min_ratio: float = 0.0
) -> float:
    """Return the multiplier of the base learning rate at ``step``.

    Linear warm-up from ``1 / warmup_steps`` to 1, then either constant or a half-cosine
    decay to ``min_ratio`` at ``total_steps`` (Loshchilov & Hutter 2017, Eq. 5).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
