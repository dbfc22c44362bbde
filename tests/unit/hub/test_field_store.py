"""Field telemetry in the fleet database (SQLite): stored once per event id, the devices' newest figures,
windows for rollout decisions, downsampling to hours and pruning; and the field gate of the rollout
state machine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.rollout.machine import FieldCheck, FieldGate, RolloutSpec, StageCounts, decide, field_failure, start
from edgehub.protocol.messages import FieldTelemetry
from edgehub.protocol.telemetry import LATENCY_EDGES_MS, FieldReference, FieldStats, InputSummary, Reference, bucket

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
REF = FieldReference(inputs={"x": Reference(edges=[0.5], proportions=[0.5, 0.5])})


def interval(n: int, device="cam-01", variant="m-v1-fp32", requests=60, errors=0, ms=2.0, hist=(30, 30),
             at=T0) -> FieldTelemetry:
    latency = [0] * (len(LATENCY_EDGES_MS) + 1)
    latency[bucket(ms, LATENCY_EDGES_MS)] = requests
    stats = FieldStats(requests=requests, errors={"inference": errors} if errors else {}, latency_counts=latency,
                       inputs=[InputSummary(name="x", count=requests, hist=list(hist))])
    start_at = at + timedelta(minutes=n)
    return FieldTelemetry(event_id=f"ev-{device}-{variant}-{n:06d}", device_id=device, generation=1, variant_id=variant,
                          start=start_at, end=start_at + timedelta(minutes=1), stats=stats)


@pytest.fixture()
def fleet(tmp_path):
    store = FleetStore(f"sqlite:///{tmp_path}/registry.db")
    yield store
    store.close()


def test_intervals_are_stored_once_with_the_newest_figures_per_device(fleet):
    first = [interval(n, requests=300, hist=(150, 150)) for n in range(5)]
    assert fleet.ingest([], first, reference_of=lambda v: REF).new_events == 5
    assert fleet.ingest([], first[:2], reference_of=lambda v: REF).new_events == 0  # re-delivered: stored once
    drifting = interval(5, requests=300, errors=30, ms=9.0, hist=(300, 0))
    fleet.ingest([], [drifting], reference_of=lambda v: REF)
    rows = fleet.telemetry(device_id="cam-01")
    assert len(rows) == 6 and [r.requests for r in rows] == [300] * 6
    [newest] = fleet.field_summary(["cam-01"])["cam-01"]
    assert newest.requests_per_min == pytest.approx(300) and newest.error_rate == pytest.approx(30 / 330)
    assert newest.p99_ms >= 9.0 and newest.drift > 0.25 and rows[0].drift == pytest.approx(0.0, abs=1e-9)
    fleet.ingest([], [interval(1)], reference_of=lambda v: REF)  # an old interval arriving late
    assert fleet.field_summary(["cam-01"])["cam-01"][0].end == drifting.end
    # Too few requests to measure drift: the device keeps its last measured drift.
    fleet.ingest([], [interval(6, requests=20, hist=(10, 10))], reference_of=lambda v: REF)
    [quiet] = fleet.field_summary(["cam-01"])["cam-01"]
    assert quiet.requests_per_min == pytest.approx(20) and quiet.drift == newest.drift


def test_windows_for_a_rollout_and_downsampling(fleet):
    events = [interval(n, device=d, variant=v, errors=3 if v == "m-v2-fp32" else 0)
              for n in range(120) for d in ("a", "b") for v in ("m-v1-fp32", "m-v2-fp32") if (n < 60) == (v == "m-v1-fp32")]
    fleet.ingest([], events)
    new, devices = fleet.field_window(["a", "b"], ["m-v2-fp32"], since=T0 + timedelta(minutes=60))
    assert devices == 2 and new.requests == 2 * 60 * 60 and new.error_count == 2 * 60 * 3
    old, _ = fleet.field_window_excluding(["a", "b"], ["m-v2-fp32"], since=T0 - timedelta(hours=1),
                                          until=T0 + timedelta(minutes=61))
    assert old.requests == 2 * 60 * 60 and old.error_count == 0

    merged, pruned = fleet.downsample_telemetry(now=T0 + timedelta(days=1, hours=3))
    assert merged == 240 and pruned == 0
    rows = fleet.telemetry()
    hours = {(e.device_id, e.variant_id, e.end.replace(minute=0)) for e in events}
    assert {r.resolution for r in rows} == {"hour"} and len(rows) == len(hours)
    assert sum(r.requests for r in rows) == 240 * 60 and sum(r.intervals for r in rows) == 240
    # Late raw intervals of an hour already merged join its row; nothing is counted twice.
    fleet.ingest([], [interval(10, device="a", variant="m-v1-fp32").model_copy(update={"event_id": "late-1"})])
    fleet.downsample_telemetry(now=T0 + timedelta(days=1, hours=3))
    assert sum(r.requests for r in fleet.telemetry()) == 241 * 60 and len(fleet.telemetry()) == len(hours)
    assert fleet.downsample_telemetry(now=T0 + timedelta(days=40)) == (0, len(hours))
    assert fleet.telemetry() == []


def test_the_field_gate_fails_a_stage_that_installed_fine():
    gate = FieldGate(max_error_rate=0.05, max_p99_ratio=1.5, max_output_shift=0.2, min_requests=100)
    assert field_failure(gate, FieldCheck(requests=99, error_rate=0.5)) is None  # not enough evidence yet
    assert "error rate 20.0% > 5.0%" in field_failure(gate, FieldCheck(requests=500, error_rate=0.2))
    assert "2.00x the previous" in field_failure(gate, FieldCheck(requests=500, p99_ms=4.0, previous_p99_ms=2.0))
    assert "outputs shifted" in field_failure(gate, FieldCheck(requests=500, output_shift=0.5))
    assert field_failure(gate, FieldCheck(requests=500, error_rate=0.01, p99_ms=2.5, previous_p99_ms=2.0)) is None

    spec = RolloutSpec(model="m", version=2, selector="lab", field=gate)
    s = start(spec, T0)
    installed = {0: StageCounts(total=5, activated=5), 1: StageCounts(total=95)}
    assert decide(s, installed, T0, None) is s  # installs passed, the field has not spoken
    assert decide(s, installed, T0, FieldCheck(requests=50)) is s
    good = decide(s, installed, T0, FieldCheck(requests=500, error_rate=0.0, p99_ms=2.0, previous_p99_ms=2.0))
    assert good.stage == 1 and "field: 500 requests" in good.reason and good.history[-1].field.requests == 500
    bad = decide(s, installed, T0, FieldCheck(requests=500, error_rate=0.3))
    assert bad.status == "rolled_back" and "field error rate" in bad.reason and bad.history[-1].field.error_rate == 0.3
