"""Reconnect delays: exponential back-off with jitter, so a fleet does not reconnect in lockstep.

After a broker restart every device sees its connection drop at the same moment; without
jitter they would all come back in the same second, and again after each doubling. "Equal
jitter": the n-th delay is drawn uniformly from [c/2, c] with c = min(cap, base * 2**n), so it
keeps growing (a flaky broker is not hammered) yet devices spread over half the window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The delay before reconnect attempt `attempt` (0 = the first retry)."""
    if attempt < 0 or base_s <= 0 or cap_s < base_s:
        raise ValueError("need attempt >= 0 and 0 < base_s <= cap_s")
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 62)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class Backoff:
    """Counts failed attempts; `next_delay()` grows until `reset()` (a successful connect)."""

    base_s: float = 1.0
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempts, self.base_s, self.cap_s, self.rng)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


__all__ = ["Backoff", "backoff_delay"]
