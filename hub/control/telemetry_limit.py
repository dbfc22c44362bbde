"""Per-device rate limit on field telemetry: a device that floods intervals (a bug, a hostile agent)
gets its excess dropped, counted and logged, and every other device's telemetry is stored as usual.

A token bucket per device: `burst` intervals at once (an agent back from a day offline sends its
queue, at most 48 merged intervals, at once), refilled at `per_s` intervals per second (a few
times the rate the desired state asks for). Pure: the clock is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BURST = 64


@dataclass
class TelemetryLimit:
    per_s: float
    burst: float = BURST
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # device -> (tokens, at)
    _swept: float = 0.0

    @classmethod
    def for_interval(cls, interval_s: float) -> TelemetryLimit:
        """Four times the asked-for rate (several variants in one interval, clock skew), at least one a minute."""
        return cls(per_s=max(4.0 / max(interval_s, 1e-3), 1 / 60))

    def allow(self, device_id: str, now: float) -> bool:
        tokens, at = self._tokens.get(device_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_s)
        if tokens < 1.0:
            self._tokens[device_id] = (tokens, now)
            return False
        self._tokens[device_id] = (tokens - 1.0, now)
        return True

    def admit(self, events: list, now: float) -> tuple[list, dict[str, int]]:
        """The events to store (everything but telemetry past its device's rate), and per device how
        many telemetry intervals were dropped. Forgets idle devices once a minute."""
        kept, dropped = [], {}
        for e in events:
            if e.kind == "telemetry" and not self.allow(e.device_id, now):
                dropped[e.device_id] = dropped.get(e.device_id, 0) + 1
            else:
                kept.append(e)
        if now - self._swept >= 60.0:
            self._swept = now
            self.forget_idle(now)
        return kept, dropped

    def forget_idle(self, now: float) -> None:
        """Drop devices whose bucket is full again (bounded memory in a large fleet)."""
        full = [d for d, (tokens, at) in self._tokens.items() if tokens + (now - at) * self.per_s >= self.burst]
        for device_id in full:
            del self._tokens[device_id]
