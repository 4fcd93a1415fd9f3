"""Per-step cosine schedules (learning rate, weight decay, EMA momentum)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["CosineSchedule", "cosine_schedule"]


class CosineSchedule:
    """`end + (start - end) * (1 + cos(pi * step / total_steps)) / 2`; steps past the end stay at `end`."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1 but is {total_steps}")
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)

    def __call__(self, step: int) -> float:
        """The value at `step` (0-based; clamped to [0, total_steps])."""
        progress = min(max(step, 0), self.total_steps) / self.total_steps
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return f"CosineSchedule(start={self.start}, end={self.end}, total_steps={self.total_steps})"


def cosine_schedule(start: float, end: float, total_steps: int) -> Callable[[int], float]:
    """A `CosineSchedule(start, end, total_steps)`."""
    return CosineSchedule(start, end, total_steps)
