"""Event numbers: the agent's outbox numbers its events, the hub counts what it stored against them,
so events lost between a PUBACK and the hub's database show up as missing (issue: a device taking
the hub's share of events)."""

from __future__ import annotations

import json

import pytest

from edgehub.agent.outbox import Outbox
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.fleet.traffic import StreamCount, count_stream
from edgehub.protocol.messages import AgentError
from edgehub.protocol.wire import encode, parse_event


def test_count_stream_counts_gaps_not_order_or_resends():
    assert count_stream(None, []) is None
    first = count_stream(None, [("aa11bb22", 1), ("aa11bb22", 2)])
    assert (first.max_seq, first.received, first.missing) == (2, 2, 0)
    # 3 and 4 lost, 6 arrives before 5: two missing, whatever the order.
    later = count_stream(first, [("aa11bb22", 6), ("aa11bb22", 5)])
    assert (later.max_seq, later.received, later.missing) == (6, 4, 2)
    # A late arrival of a number below the highest fills its hole.
    filled = count_stream(later, [("aa11bb22", 3)])
    assert filled.missing == 1
    # A new stream (the device's data directory was wiped) starts again; the old one's tail is not counted.
    fresh = count_stream(filled, [("aa11bb22", 7), ("cc33dd44", 1)])
    assert fresh == StreamCount("cc33dd44", 1, 1) and fresh.missing == 0
    assert StreamCount("x", 3, 5).missing == 0  # never negative


def test_the_outbox_numbers_events_across_restarts_and_a_new_file_is_a_new_stream(tmp_path):
    def body(event_id):
        return lambda stream, seq: encode(AgentError(event_id=event_id, device_id="dev-1", generation=0, error="e",
                                                     stream=stream, seq=seq))

    box = Outbox(tmp_path / "outbox.db")
    stream = box.stream
    ids = [f"event-{i:04d}" for i in range(3)]
    seqs = [parse_event(box.add_numbered(i, "t", body(i)), device="dev-1").seq for i in ids]
    assert seqs == [1, 2, 3]
    box.close()
    box = Outbox(tmp_path / "outbox.db")
    assert box.stream == stream
    assert parse_event(box.add_numbered("event-0003", "t", body("event-0003")), device="dev-1").seq == 4
    assert len(box) == 4
    box.close()
    other = Outbox(tmp_path / "other.db")
    assert other.stream != stream and len(other.stream) == 16
    assert parse_event(other.add_numbered("event-other", "t", body("event-other")), device="dev-1").seq == 1
    other.close()


def test_a_body_that_fails_leaves_the_number_unused(tmp_path):
    box = Outbox(tmp_path / "outbox.db")

    def broken(stream, seq):
        raise ValueError("cannot encode")

    with pytest.raises(ValueError):
        box.add_numbered("bad", "t", broken)
    assert len(box) == 0
    seq = json.loads(box.add_numbered("ok", "t", lambda s, n: json.dumps({"seq": n}).encode()))["seq"]
    assert seq == 1  # the failed event's number was rolled back with it
    box.close()


@pytest.fixture
def store(fleet_store: FleetStore) -> FleetStore:
    return fleet_store


def _numbered(device: str, seq: int, stream: str = "0123abcd") -> AgentError:
    return AgentError(event_id=f"{device}-{stream}-{seq}", device_id=device, generation=0, error="x",
                      stream=stream, seq=seq)


def test_the_store_counts_each_device_once_per_event(store: FleetStore):
    for device in ("dev-1", "dev-2"):
        store.enroll(device, "x86-cpu", "hash")
    batch = [_numbered("dev-1", s) for s in (1, 2, 5)] + [_numbered("dev-2", s) for s in (1, 2, 3)]
    store.ingest([], batch)
    store.ingest([], [_numbered("dev-1", 5), _numbered("dev-1", 2)])  # resends: nothing changes
    store.ingest([], [_numbered("dev-1", 7), AgentError(event_id="old-agent-event", device_id="dev-1", generation=0,
                                                        error="no numbers")])
    counts = store.stream_counts()
    assert counts["dev-1"] == StreamCount("0123abcd", 7, 4)
    assert counts["dev-2"].missing == 0
    assert store.events_missing() == (3, 1)
    assert store.stream_counts(["dev-2", "dev-9"]) == {"dev-2": StreamCount("0123abcd", 3, 3)}
    # An event from a device that is not enrolled (revoked meanwhile) is stored and not counted.
    store.ingest([], [_numbered("ghost", 9)])
    assert "ghost" not in store.stream_counts() and store.events_missing() == (3, 1)
    rows = {r["device"]: r["events"] for r in store.status_rows()}
    assert rows == {"dev-1": {"received": 4, "missing": 3}, "dev-2": {"received": 3, "missing": 0}}
    assert store.status_summary()["events_missing"] == {"events": 3, "devices": 1}
