"""The per-device telemetry rate limit (a token bucket, clock passed in)."""

from __future__ import annotations

from edgehub.hub.control.telemetry_limit import TelemetryLimit


def test_a_burst_then_the_rate_per_device():
    limit = TelemetryLimit(per_s=1.0, burst=5)
    assert [limit.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limit.allow("b", 0.0)  # another device has its own bucket
    assert not limit.allow("a", 0.5) and limit.allow("a", 1.6) and not limit.allow("a", 1.7)
    limit.forget_idle(100.0)
    assert limit._tokens == {}  # full buckets are forgotten: memory stays bounded
    assert TelemetryLimit.for_interval(60).per_s == 4 / 60 and TelemetryLimit.for_interval(1e6).per_s == 1 / 60


def test_admit_keeps_other_events_and_counts_what_it_drops():
    from types import SimpleNamespace

    limit = TelemetryLimit(per_s=0.0, burst=2)
    events = [SimpleNamespace(kind=k, device_id=d) for k, d in
              (("telemetry", "a"), ("benchmark", "a"), ("telemetry", "a"), ("telemetry", "a"), ("telemetry", "b"))]
    kept, dropped = limit.admit(events, now=0.0)
    assert [(e.kind, e.device_id) for e in kept] == [("telemetry", "a"), ("benchmark", "a"), ("telemetry", "a"),
                                                     ("telemetry", "b")]
    assert dropped == {"a": 1}
