"""Field telemetry in the fleet database: intervals as devices sent them (raw, for a day), merged
per hour beyond that (30 days), and each device's newest figures for `fleet status`.

Storing is part of the ingest transaction (TrafficLog.ingest): one INSERT for the batch's
intervals (once each, by event id) and one upsert of the devices' newest figures. Queries go
through the (device, end) and (variant, end) indexes. `downsample` is the pruning job the hub's
leader runs every few minutes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from edgehub.hub.fleet.db import FleetDb
from edgehub.hub.fleet.schema import DeviceFieldRow, TelemetryRow
from edgehub.hub.fleet.sql import chunks, insert_ignoring_duplicates, upsert
from edgehub.protocol.messages import FieldTelemetry
from edgehub.protocol.telemetry import LATENCY_EDGES_MS, FieldReference, FieldStats, input_drift
from edgehub.zoo.records import utcnow

RAW_FOR = timedelta(days=1)
KEEP_FOR = timedelta(days=30)
ReferenceOf = Callable[[str | None], FieldReference | None]


def compact(stats: FieldStats) -> dict:
    """The stats as stored: latency buckets sparse (most of the 75 are empty), about 40% smaller."""
    data = stats.model_dump(mode="json")
    data["latency_counts"] = {str(i): n for i, n in enumerate(stats.latency_counts) if n}
    return data


def expand(data: dict) -> FieldStats:
    """Stored stats back as FieldStats (rows written either way)."""
    latency = data.get("latency_counts")
    if isinstance(latency, dict):
        counts = [0] * (len(LATENCY_EDGES_MS) + 1)
        for i, n in latency.items():
            counts[int(i)] = n
        data = {**data, "latency_counts": counts}
    return FieldStats.model_validate(data)


def _row(e: FieldTelemetry, reference: FieldReference | None, resolution: str = "raw") -> dict:
    s = e.stats
    return dict(event_id=e.event_id, device_id=e.device_id, variant_id=e.variant_id, resolution=resolution,
                start=e.start, end=e.end, intervals=e.intervals, requests=s.requests, errors=s.error_count,
                p99_ms=s.latency_ms(0.99), drift=input_drift(s, reference), stats=compact(s))


def store_telemetry(session, events: list[FieldTelemetry], reference_of: ReferenceOf | None) -> set[str]:
    """Store a batch's intervals (once each) and the devices' newest figures; the ids stored."""
    if not events:
        return set()
    refs: dict[str | None, FieldReference | None] = {}
    rows = []
    for e in events:
        if e.variant_id not in refs:
            refs[e.variant_id] = reference_of(e.variant_id) if reference_of else None
        rows.append(_row(e, refs[e.variant_id]))
    stored = set(insert_ignoring_duplicates(session, TelemetryRow.__table__, rows))
    # The newest figures per device and model slot ("" for a one-model agent, which names none).
    slot_of = {e.event_id: e.slot or "" for e in events}
    p50_of = {e.event_id: e.stats.latency_ms(0.5) for e in events}
    newest: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["device_id"], slot_of[row["event_id"]])
        if row["event_id"] in stored and (key not in newest or row["end"] >= newest[key]["end"]):
            newest[key] = row
    minutes = lambda r: max((r["end"] - r["start"]).total_seconds() / 60, 1 / 60)  # noqa: E731
    # An interval with too few requests to measure drift keeps the slot's last measured drift.
    unmeasured = sorted({d for (d, _), r in newest.items() if r["drift"] is None})
    f = DeviceFieldRow.__table__
    kept = {(d, slot): drift for chunk in chunks(unmeasured) for d, slot, drift in session.execute(
        select(f.c.device_id, f.c.slot, f.c.drift).where(f.c.device_id.in_(chunk)))}
    upsert(session, f, [
        dict(device_id=d, slot=slot, variant_id=r["variant_id"], end=r["end"], requests_per_min=r["requests"] / minutes(r),
             error_rate=r["errors"] / max(1, r["requests"] + r["errors"]), requests=r["requests"], errors=r["errors"],
             p50_ms=p50_of[r["event_id"]], p99_ms=r["p99_ms"],
             drift=r["drift"] if r["drift"] is not None else kept.get((d, slot)))
        for (d, slot), r in newest.items()], ["device_id", "slot"], where=lambda table, new: table.c.end <= new.end)
    return stored


def merge_rows(rows: list) -> FieldStats:
    """The merged stats of stored rows."""
    total = FieldStats()
    for r in rows:
        total = total.merge(expand(r.stats))
    return total


class FieldTables:
    def __init__(self, db: FleetDb):
        self.db = db

    def telemetry(self, *, device_id: str | None = None, variant_ids: Iterable[str] | None = None,
                  since: datetime | None = None, limit: int = 10_000) -> list[TelemetryRow]:
        """Stored intervals, oldest first, by device and/or variants, ending after `since`."""
        query = select(TelemetryRow).order_by(TelemetryRow.end).limit(limit)
        if device_id is not None:
            query = query.where(TelemetryRow.device_id == device_id)
        if variant_ids is not None:
            query = query.where(TelemetryRow.variant_id.in_(list(variant_ids)))
        if since is not None:
            query = query.where(TelemetryRow.end > since)
        with self.db.sessions() as session:
            return list(session.scalars(query))

    def field_window(self, device_ids: Iterable[str], variant_ids: Iterable[str], since: datetime,
                     until: datetime | None = None) -> tuple[FieldStats, int]:
        """The merged stats of these devices running these variants between `since` and `until`, and
        how many devices reported (what a rollout stage is judged on)."""
        ids, variants = list(dict.fromkeys(device_ids)), list(dict.fromkeys(variant_ids))
        total, devices = FieldStats(), set()
        if not ids or not variants:
            return total, 0
        with self.db.sessions() as session:
            for chunk in chunks(ids):
                query = select(TelemetryRow.device_id, TelemetryRow.stats).where(
                    TelemetryRow.device_id.in_(chunk), TelemetryRow.variant_id.in_(variants), TelemetryRow.end > since)
                if until is not None:
                    query = query.where(TelemetryRow.end <= until)
                for device_id, stats in session.execute(query):
                    total = total.merge(expand(stats))
                    devices.add(device_id)
        return total, len(devices)

    def field_window_excluding(self, device_ids: Iterable[str], variant_ids: Iterable[str], since: datetime,
                               until: datetime) -> tuple[FieldStats, int]:
        """Like field_window, for every variant but these (what the devices ran before)."""
        ids, excluded = list(dict.fromkeys(device_ids)), list(dict.fromkeys(variant_ids))
        total, devices = FieldStats(), set()
        with self.db.sessions() as session:
            for chunk in chunks(ids):
                for device_id, stats in session.execute(select(TelemetryRow.device_id, TelemetryRow.stats).where(
                        TelemetryRow.device_id.in_(chunk), TelemetryRow.variant_id.not_in(excluded),
                        TelemetryRow.end > since, TelemetryRow.end <= until)):
                    total = total.merge(expand(stats))
                    devices.add(device_id)
        return total, len(devices)

    def field_summary(self, device_ids: Iterable[str]) -> dict[str, list[DeviceFieldRow]]:
        """device -> its newest field figures, one row per model slot."""
        found: dict[str, list[DeviceFieldRow]] = {}
        with self.db.sessions() as session:
            for chunk in chunks(list(dict.fromkeys(device_ids))):
                for r in session.scalars(select(DeviceFieldRow).where(DeviceFieldRow.device_id.in_(chunk))
                                         .order_by(DeviceFieldRow.slot)):
                    found.setdefault(r.device_id, []).append(r)
        return found

    def downsample(self, now: datetime | None = None, raw_for: timedelta = RAW_FOR,
                   keep_for: timedelta = KEEP_FOR) -> tuple[int, int]:
        """Merge raw intervals older than `raw_for` into one row per device, variant and hour; delete
        hourly rows older than `keep_for`. Returns (raw rows merged, rows pruned)."""
        now = now or utcnow()
        cutoff = now - raw_for
        with self.db.sessions.begin() as session:
            old = list(session.scalars(select(TelemetryRow).where(TelemetryRow.resolution == "raw",
                                                                  TelemetryRow.end <= cutoff)))
            groups: dict[tuple[str, str | None, datetime], list[TelemetryRow]] = {}
            for r in old:
                hour = r.end.replace(minute=0, second=0, microsecond=0)
                groups.setdefault((r.device_id, r.variant_id, hour), []).append(r)
            merged = []
            for (device, variant, hour), rows in groups.items():
                event_id = "hour-" + hashlib.sha256(f"{device}|{variant}|{hour.isoformat()}".encode()).hexdigest()[:32]
                earlier = session.get(TelemetryRow, event_id)  # the same hour merged before (late intervals)
                if earlier is not None:
                    rows = [*rows, earlier]
                    session.delete(earlier)
                    session.flush()
                event = FieldTelemetry(event_id=event_id, device_id=device, generation=0, variant_id=variant,
                                       start=min(r.start for r in rows), end=max(r.end for r in rows),
                                       intervals=sum(r.intervals for r in rows), stats=merge_rows(rows))
                row = _row(event, None, "hour")
                row["drift"] = max((r.drift for r in rows if r.drift is not None), default=None)
                merged.append(row)
            if old:
                session.execute(delete(TelemetryRow).where(TelemetryRow.event_id.in_([r.event_id for r in old])))
            insert_ignoring_duplicates(session, TelemetryRow.__table__, merged)
            pruned = session.execute(delete(TelemetryRow).where(TelemetryRow.resolution == "hour",
                                                                TelemetryRow.end <= now - keep_for)).rowcount
        return len(old), pruned
