"""The agent's field recorder and the queue that holds intervals while offline: numbers against numpy,
a day offline bounded by merging (no request lost), and the loop that sends only when connected."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from mqtt_helpers import wait_for

from edgehub.agent.telemetry import FieldRecorder, TelemetryQueue, telemetry_loop
from edgehub.protocol.telemetry import FieldReference, Reference, percentile


@pytest.fixture()
def reference():
    return FieldReference(inputs={"x": Reference(edges=[0.25, 0.5, 0.75], proportions=[0.25] * 4)},
                          outputs={"y": Reference(classes=3, proportions=[0.3, 0.3, 0.4]),
                                   "e": Reference(edges=[1.0, 2.0], proportions=[0.2, 0.5, 0.3])})


def test_the_recorder_counts_what_was_served(reference):
    rng = np.random.default_rng(0)
    recorder = FieldRecorder(reference)
    xs, logits, latencies = [], [], []
    for n in range(200):
        x = rng.random((2, 8)).astype(np.float32)
        y = rng.normal(size=(2, 3))
        recorder.record("m-v1", {"x": x}, {"y": y, "e": y * 0.8}, ms=0.2 + n * 0.01)
        xs.append(x.mean(axis=1))
        logits.append(y)
        latencies.append(0.2 + n * 0.01)
    recorder.error("m-v1", "bad_request")
    recorder.flush()
    (event,) = recorder.take("cam-01", 7)
    s = event.stats
    means = np.concatenate(xs)
    assert (event.device_id, event.generation, event.variant_id) == ("cam-01", 7, "m-v1")
    assert s.requests == 200 and s.errors == {"bad_request": 1}
    x = s.inputs[0]
    assert x.count == 400 and x.mean == pytest.approx(means.mean()) and x.std == pytest.approx(means.std())
    assert x.hist == np.bincount(np.searchsorted([0.25, 0.5, 0.75], means, side="right"), minlength=4).tolist()
    outputs = {o.name: o for o in s.outputs}
    assert outputs["y"].hist == np.bincount(np.concatenate(logits).argmax(1), minlength=3).tolist()
    norms = np.linalg.norm(np.concatenate(logits) * 0.8, axis=1)
    assert outputs["e"].hist == np.bincount(np.searchsorted([1.0, 2.0], norms, side="right"), minlength=3).tolist()
    assert np.quantile(latencies, 0.99) <= s.latency_ms(0.99) <= np.quantile(latencies, 0.99) * 1.25
    assert recorder.take("cam-01", 7) == []  # a new interval started empty
    off = FieldRecorder(reference, enabled=False)
    off.record("m-v1", {"x": np.zeros((1, 8))}, {}, 1.0)
    assert off.take("cam-01", 1) == []


def test_a_day_offline_is_bounded_by_merging_and_loses_no_request(tmp_path, reference):
    queue = TelemetryQueue(tmp_path / "telemetry.db", max_rows=48)
    recorder = FieldRecorder(reference)
    total = 0
    for minute in range(24 * 60):
        for _ in range(1 + minute % 3):
            recorder.record("m-v1" if minute < 600 else "m-v2", {"x": np.full((1, 4), 0.1)}, {}, ms=1.0)
            total += 1
        recorder.flush()
        for event in recorder.take("cam-01", 1):
            queue.add(event)
    assert len(queue) == 48
    back = queue.take()
    assert len(queue) == 0 and sum(e.stats.requests for e in back) == total
    assert sum(e.intervals for e in back) == 24 * 60 and {e.variant_id for e in back} == {"m-v1", "m-v2"}
    assert all(a.start <= b.start for a, b in zip(back, back[1:]))
    assert sum(e.stats.inputs[0].count for e in back) == total
    assert percentile(back[0].stats.latency_counts, 0.5) == pytest.approx(1.0, rel=0.25)


def test_the_loop_sends_only_while_connected(tmp_path, reference):
    queue = TelemetryQueue(tmp_path / "t.db")
    recorder = FieldRecorder(reference)
    connected, stopping, sent = threading.Event(), threading.Event(), []
    clock = [0.0]
    thread = threading.Thread(target=telemetry_loop, kwargs=dict(
        recorder=recorder, queue=queue, device_id="cam-01", generation=lambda: 1, interval_s=lambda: 0.05,
        connected=connected, publish=sent.append, stopping=stopping, clock=lambda: clock[0]))
    thread.start()
    try:
        recorder.record("m-v1", {"x": np.zeros((1, 4))}, {}, 1.0)
        recorder.flush()
        clock[0] += 1
        assert wait_for(lambda: len(queue) == 1) and sent == []  # offline: held
        connected.set()
        recorder.record("m-v1", {"x": np.zeros((1, 4))}, {}, 1.0)
        recorder.flush()
        clock[0] += 1
        assert wait_for(lambda: len(sent) == 2) and len(queue) == 0
    finally:
        stopping.set()
        thread.join(5)

