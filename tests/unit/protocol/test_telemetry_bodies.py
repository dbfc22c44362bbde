"""Telemetry bodies: percentiles from buckets, PSI, exact merging of intervals, validation."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edgehub.protocol.base import MessageError
from edgehub.protocol.messages import FieldTelemetry
from edgehub.protocol.telemetry import (
    LATENCY_EDGES_MS,
    FieldStats,
    InputSummary,
    OutputSummary,
    Reference,
    bucket,
    output_shift,
    percentile,
    psi,
)
from edgehub.protocol.wire import encode, parse_event

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def latency_counts(values_ms) -> list[int]:
    counts = [0] * (len(LATENCY_EDGES_MS) + 1)
    for v in values_ms:
        counts[bucket(v, LATENCY_EDGES_MS)] += 1
    return counts


def test_percentiles_from_buckets_are_within_one_bucket():
    values = np.random.default_rng(0).lognormal(0.0, 0.5, 5000)
    counts = latency_counts(values)
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(values, q))
        got = percentile(counts, q)
        assert exact <= got <= exact * 1.25 + 1e-9  # the bucket's upper edge, buckets 1.25x apart
    assert percentile([0] * len(counts), 0.5) is None


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    reference = [0.1] * 10
    assert psi(reference, [100] * 10) == pytest.approx(0.0, abs=1e-12)
    small = psi(reference, [90, 110] * 5)
    large = psi(reference, [0] * 5 + [200] * 5)
    assert 0 < small < 0.1 < 0.25 < large
    assert psi(reference, [0] * 10) is None and psi(reference, [1, 2]) is None


def stats(values: np.ndarray, ms: list[float], errors: int = 0) -> FieldStats:
    edges = [0.25, 0.5, 0.75]
    hist = np.bincount(np.searchsorted(edges, values, side="right"), minlength=4).tolist()
    mean = float(values.mean())
    return FieldStats(requests=len(values), errors={"inference": errors} if errors else {},
                      latency_counts=latency_counts(ms),
                      inputs=[InputSummary(name="x", count=len(values), mean=mean, m2=float(((values - mean) ** 2).sum()),
                                           min=float(values.min()), max=float(values.max()), hist=hist)],
                      outputs=[OutputSummary(name="y", kind="classes", hist=[len(values), 0, 0])])


def test_merging_intervals_equals_one_interval_of_everything():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(700) * 0.5
    ms_a, ms_b = list(rng.random(300) * 3), list(rng.random(700) * 9)
    merged = stats(a, ms_a, errors=2).merge(stats(b, ms_b, errors=3))
    whole = stats(np.concatenate([a, b]), ms_a + ms_b)
    assert merged.requests == 1000 and merged.errors == {"inference": 5} and merged.error_count == 5
    assert merged.latency_counts == whole.latency_counts
    x, w = merged.inputs[0], whole.inputs[0]
    assert (x.count, x.hist, x.min, x.max) == (w.count, w.hist, w.min, w.max)
    assert x.mean == pytest.approx(w.mean) and x.std == pytest.approx(w.std)
    assert x.std == pytest.approx(np.concatenate([a, b]).std())
    assert merged.outputs[0].hist == [1000, 0, 0]


def test_output_shift_compares_histograms_of_the_same_output():
    before = FieldStats(outputs=[OutputSummary(name="y", kind="classes", hist=[50, 50, 0])])
    same = FieldStats(outputs=[OutputSummary(name="y", kind="classes", hist=[500, 500, 0])])
    moved = FieldStats(outputs=[OutputSummary(name="y", kind="classes", hist=[0, 100, 900])])
    assert output_shift(before, same) == pytest.approx(0.0, abs=1e-9)
    assert output_shift(before, moved) > 1.0
    assert output_shift(FieldStats(), moved) is None


def test_telemetry_events_are_validated_like_every_body():
    event = FieldTelemetry(event_id="t" * 16, device_id="cam-01", generation=3, variant_id="m-v1-fp32", start=T0,
                           end=T0 + timedelta(seconds=60), stats=FieldStats(requests=5))
    assert parse_event(encode(event), device="cam-01") == event
    with pytest.raises(MessageError, match="names device"):
        parse_event(encode(event), device="cam-02")
    body = json.loads(encode(event))
    for bad, match in ((dict(body, end=(T0 - timedelta(1)).isoformat()), "end is before start"),
                       ({**body, "stats": {**body["stats"], "latency_counts": [1, 2]}}, "latency_counts"),
                       ({**body, "stats": {**body["stats"], "requests": -1}}, "requests"),
                       ({**body, "stats": {**body["stats"], "errors": {"oops": 1}}}, "errors")):
        with pytest.raises(MessageError, match=match):
            parse_event(json.dumps(bad).encode(), device="cam-01")
    nan = encode(event).replace(b'"requests":5', b'"requests":5,"x":NaN')
    with pytest.raises(MessageError, match="not JSON"):
        parse_event(nan, device="cam-01")
    with pytest.raises(ValueError, match="proportions"):
        Reference(edges=[0.0, 1.0], proportions=[1.0])
    with pytest.raises(ValueError, match="sorted"):
        Reference(edges=[1.0, math.inf], proportions=[0.3, 0.3, 0.4])
