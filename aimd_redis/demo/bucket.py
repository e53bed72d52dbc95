"""A provider's budget as the demo's servers keep it: the cold server over
HTTP, and the simulator's model of it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Bucket:
    """A budget: holds one minute's worth (``limit``) and refills at ``limit``/60 a second."""

    limit: int
    level: float
    at: float
    """When ``level`` was last brought up to date (server clock)."""

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(float(self.limit), self.level + (now - self.at) * self.limit / 60)
            self.at = now

    def wait(self, need: int) -> float:
        """Seconds until ``need`` fits, counted from the last refill; inf if it never can."""
        if need > self.limit:
            return math.inf
        return max(0.0, (need - self.level) * 60 / self.limit)

    def reset(self) -> float:
        """Seconds until full again."""
        return (self.limit - self.level) * 60 / self.limit
