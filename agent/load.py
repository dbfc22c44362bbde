"""How busy each model slot is: requests per minute over the last minute, per slot.

A benchmark report carries the other slots' rate at the time it ran (`load_rpm`), so a figure
measured while the device also served other models is labelled as such, and the device state
carries each slot's rate. Counting is one lock and one addition per request: a ring of
one-second buckets, no timestamps kept per request.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

WINDOW_S = 60


class RequestRates:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[int]] = {}  # slot -> WINDOW_S counts, indexed by second % WINDOW_S
        self._stamps: dict[str, list[int]] = {}  # slot -> the second each bucket counts

    def count(self, slot: str) -> None:
        second = int(self._clock())
        i = second % WINDOW_S
        with self._lock:
            buckets = self._buckets.get(slot)
            if buckets is None:
                buckets = self._buckets[slot] = [0] * WINDOW_S
                self._stamps[slot] = [-1] * WINDOW_S
            stamps = self._stamps[slot]
            if stamps[i] != second:
                stamps[i], buckets[i] = second, 0
            buckets[i] += 1

    def per_minute(self, slot: str) -> float:
        """Requests of `slot` in the last WINDOW_S seconds (= per minute)."""
        oldest = int(self._clock()) - WINDOW_S
        with self._lock:
            buckets, stamps = self._buckets.get(slot), self._stamps.get(slot)
            if buckets is None:
                return 0.0
            return float(sum(n for n, s in zip(buckets, stamps) if s > oldest))

    def others_per_minute(self, slot: str | None) -> float:
        """Requests per minute of every slot but `slot`: the load a benchmark of `slot` ran under."""
        with self._lock:
            slots = [s for s in self._buckets if s != slot]
        return sum(self.per_minute(s) for s in slots)
