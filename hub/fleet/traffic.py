"""What devices send: events (stored once each) and the newest benchmark result per variant,
written for a whole batch of messages in one transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, update

from edgehub.hub.fleet.db import FleetDb, note_change
from edgehub.hub.fleet.devices import CohortOf, apply_states
from edgehub.hub.fleet.field import ReferenceOf, store_telemetry
from edgehub.hub.fleet.records import RolloutOutcome
from edgehub.hub.fleet.schema import BenchmarkRow, DeviceRow, EventRow, EventStreamRow, RolloutDeviceRow
from edgehub.hub.fleet.sql import chunks, insert_ignoring_duplicates, upsert
from edgehub.protocol.messages import ActivationResult, BenchmarkReport, DeviceState, FieldTelemetry
from edgehub.zoo.records import utcnow


def failed_activation_report(event: Any) -> BenchmarkReport | None:
    """A variant that failed its health check after activation counts as failed on that device."""
    if not isinstance(event, ActivationResult) or event.ok:
        return None
    return BenchmarkReport(event_id=event.event_id, device_id=event.device_id, generation=event.generation,
                           variant_id=event.variant_id, ok=False, at=event.at,
                           error=f"failed after activation: {event.error or 'unknown error'}")


@dataclass(frozen=True)
class StreamCount:
    """A device's event stream as the hub has stored it."""

    stream: str
    max_seq: int
    received: int

    @property
    def missing(self) -> int:
        return max(0, self.max_seq - self.received)


def count_stream(before: StreamCount | None, numbered: list[tuple[str, int]]) -> StreamCount | None:
    """`before` plus a device's newly stored events, as (stream, seq) in arrival order (each event
    once: duplicates are dropped by event id before this). A new stream (the agent's outbox was
    wiped) starts the count again; events of the stream left behind are not counted."""
    if not numbered:
        return before
    stream = numbered[-1][0]
    seqs = [seq for s, seq in numbered if s == stream]
    if before is None or before.stream != stream:
        return StreamCount(stream, max(seqs), len(seqs))
    return StreamCount(stream, max(before.max_seq, *seqs), before.received + len(seqs))


@dataclass
class Ingested:
    new_events: int = 0
    changed: set[str] = field(default_factory=set)  # devices whose state matters to reconciliation
    unknown: set[str] = field(default_factory=set)  # states from devices that are not enrolled


def _benchmark_rows(events: list, bodies: dict[int, dict]) -> list[dict]:
    """The newest report per (device, variant) in the batch (a later one wins a tie); `bodies`
    are the events' JSON bodies (by id() of the event), already made for the events table."""
    newest: dict[tuple[str, str, str], BenchmarkReport] = {}
    for e in events:
        report = e if isinstance(e, BenchmarkReport) else failed_activation_report(e)
        if report is None:
            continue
        key = (report.device_id, report.variant_id, settings_key(report))
        if key not in newest or report.at >= newest[key].at:
            newest[key] = report
    # A failed activation's report is made here: it has no body yet.
    return [dict(device_id=r.device_id, variant_id=r.variant_id, settings_key=settings_key(r), event_id=r.event_id,
                 report=bodies.get(id(r)) or r.model_dump(mode="json"), at=r.at, ok=r.ok,
                 p50_ms=r.latency.p50_ms if r.latency else None, p99_ms=r.latency.p99_ms if r.latency else None,
                 agreement=r.agreement, peak_rss_mb=r.peak_rss_mb, error=r.error, runtime=r.runtime,
                 coverage=r.coverage.accelerated if r.coverage else None)
            for r in newest.values()]


def settings_key(report: BenchmarkReport) -> str:
    return report.settings.key() if report.settings is not None else "default"


def _light_report(row) -> BenchmarkReport:
    """A report with only what selection reads, from columns (no JSON body parsed)."""
    latency = None
    if row.p50_ms is not None:
        latency = {"p50_ms": row.p50_ms, "p90_ms": row.p50_ms, "p99_ms": row.p99_ms, "mean_ms": row.p50_ms,
                   "runs": 0}
    return BenchmarkReport.model_validate({
        "event_id": row.event_id, "device_id": row.device_id, "generation": 0, "variant_id": row.variant_id,
        "ok": bool(row.ok), "error": row.error, "latency": latency, "agreement": row.agreement,
        "peak_rss_mb": row.peak_rss_mb, "runtime": row.runtime, "at": row.at})


def record_outcomes(session, outcomes: list[RolloutOutcome]) -> None:
    """Mark rollout members by what their devices reported (one statement for the batch)."""
    if not outcomes:
        return
    table = RolloutDeviceRow.__table__
    # A failure is final for the rollout: a later success does not hide it from the error count.
    session.execute(update(table).where(table.c.rollout_id == bindparam("b_rollout"),
                                        table.c.device_id == bindparam("b_device"),
                                        table.c.status != "failed")
                    .values(status=bindparam("b_status"), variant_id=bindparam("b_variant"),
                            detail=bindparam("b_detail"), updated_at=bindparam("b_at")),
                    [dict(b_rollout=o.rollout_id, b_device=o.device_id, b_status=o.status, b_variant=o.variant_id,
                          b_detail=(o.detail or "")[:500] or None, b_at=utcnow()) for o in outcomes])


class TrafficLog:
    """Events and benchmark results, and the device states that arrive with them."""

    def __init__(self, db: FleetDb):
        self.db = db

    def update_state(self, state: DeviceState, cohort_of: CohortOf | None = None) -> bool:
        """Store a device's reported state; False if the device is not enrolled."""
        return state.device_id not in self.ingest([state], [], cohort_of=cohort_of).unknown

    def ingest(self, states: list[DeviceState], events: Iterable, *, cohort_of=None,
               outcomes: Iterable[RolloutOutcome] = (), notify: Iterable[str] = (),
               reference_of: ReferenceOf | None = None) -> Ingested:
        """One batch from the broker, in one transaction: device states, events (once each, by
        event id), the newest benchmark result per (device, variant), field telemetry (its own
        table, hub/fleet/field.py; `reference_of(variant_id)` gives the eval set's bins for drift),
        rollout outcomes, and change-log entries for `notify` devices (ones another hub worker
        reconciles)."""
        arrived = list(events)
        telemetry = [e for e in arrived if isinstance(e, FieldTelemetry)]
        events = [e for e in arrived if not isinstance(e, FieldTelemetry)]
        result = Ingested()
        with self.db.sessions.begin() as session:
            if states:
                result.changed, result.unknown = apply_states(session, states, cohort_of)
            stored: set[str] = set()
            if telemetry:
                stored = store_telemetry(session, telemetry, reference_of)
            if events:
                now = utcnow()
                rows = [dict(event_id=e.event_id, device_id=e.device_id, kind=e.kind, generation=e.generation,
                             variant_id=getattr(e, "variant_id", None), body=e.model_dump(mode="json"),
                             received_at=now) for e in events]
                stored |= set(insert_ignoring_duplicates(session, EventRow.__table__, rows))
                bodies = {id(e): row["body"] for e, row in zip(events, rows, strict=True)}
                upsert(session, BenchmarkRow.__table__, _benchmark_rows(events, bodies),
                       ["device_id", "variant_id", "settings_key"],
                       where=lambda table, new: table.c.at <= new.at)
            result.new_events = len(stored)
            self._count_streams(session, [e for e in arrived if e.event_id in stored and e.seq is not None])
            record_outcomes(session, list(outcomes))
            note_change(session, "device", notify)
        return result

    @staticmethod
    def _count_streams(session, numbered: list) -> None:
        """Update the devices' event-stream counts for newly stored numbered events (two statements)."""
        if not numbered:
            return
        table = EventStreamRow.__table__
        by_device: dict[str, list[tuple[str, int]]] = {}
        for e in numbered:
            by_device.setdefault(e.device_id, []).append((e.stream, e.seq))
        before = {r.device_id: StreamCount(r.stream, r.max_seq, r.received) for chunk in chunks(list(by_device))
                  for r in session.execute(select(table).where(table.c.device_id.in_(chunk)))}
        now = utcnow()
        rows = []
        for device, items in by_device.items():
            count = count_stream(before.get(device), items)
            rows.append(dict(device_id=device, stream=count.stream, max_seq=count.max_seq, received=count.received,
                             missing=count.missing, updated_at=now))
        # Events of devices that are not enrolled (revoked meanwhile) have no row to count in.
        known = {r for chunk in chunks(list(by_device))
                 for r in session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(chunk)))}
        upsert(session, table, [r for r in rows if r["device_id"] in known], ["device_id"])

    def stream_counts(self, device_ids: Iterable[str] | None = None) -> dict[str, StreamCount]:
        """device -> its event-stream count (all devices with one when `device_ids` is None)."""
        table = EventStreamRow.__table__
        with self.db.sessions() as session:
            if device_ids is None:
                found = session.execute(select(table))
            else:
                found = (r for chunk in chunks(list(dict.fromkeys(device_ids)))
                         for r in session.execute(select(table).where(table.c.device_id.in_(chunk))))
            return {r.device_id: StreamCount(r.stream, r.max_seq, r.received) for r in found}

    def events_missing(self) -> tuple[int, int]:
        """(events missing over the fleet, devices missing any): one indexed aggregate."""
        table = EventStreamRow.__table__
        with self.db.sessions() as session:
            total, devices = session.execute(select(func.coalesce(func.sum(table.c.missing), 0),
                                                    func.count()).where(table.c.missing > 0)).one()
            return int(total), int(devices)

    def record_events(self, events: Iterable[BenchmarkReport | Any]) -> int:
        """Store events once each (by event id), in one transaction; returns how many were new.

        Benchmark reports also become the device's newest result for that variant.
        """
        return self.ingest([], events).new_events

    def events(self, device_id: str | None = None) -> list[dict]:
        query = select(EventRow).order_by(EventRow.received_at, EventRow.event_id)
        if device_id:
            query = query.where(EventRow.device_id == device_id)
        with self.db.sessions() as session:
            return [r.body for r in session.scalars(query)]

    def count_events(self) -> int:
        with self.db.sessions() as session:
            return session.scalar(select(func.count()).select_from(EventRow)) or 0

    def reports(self, device_id: str, variant_ids: Iterable[str]) -> dict[str, BenchmarkReport]:
        return self.reports_many([device_id], variant_ids).get(device_id, {})

    def reports_many(self, device_ids: Iterable[str], variant_ids: Iterable[str]) -> dict[str, dict[str, BenchmarkReport]]:
        """device -> variant -> newest report, for these devices and variants."""
        ids, variants = list(dict.fromkeys(device_ids)), list(dict.fromkeys(variant_ids))
        found: dict[str, dict[str, BenchmarkReport]] = {}
        if not ids or not variants:
            return found
        with self.db.sessions() as session:
            for chunk in chunks(ids):
                for device_id, variant_id, report in session.execute(
                        select(BenchmarkRow.device_id, BenchmarkRow.variant_id, BenchmarkRow.report)
                        .where(BenchmarkRow.device_id.in_(chunk), BenchmarkRow.variant_id.in_(variants),
                               BenchmarkRow.settings_key == "default")):
                    found.setdefault(device_id, {})[variant_id] = BenchmarkReport.model_validate(report)
        return found

    def report_facts(self, device_ids: Iterable[str], variant_ids: Iterable[str]) -> dict[str, dict[str, BenchmarkReport]]:
        """Like reports_many, for selection: ok, error, p50/p99, agreement, peak memory, runtime
        only (the other fields are not filled in)."""
        ids, variants = list(dict.fromkeys(device_ids)), list(dict.fromkeys(variant_ids))
        found: dict[str, dict[str, BenchmarkReport]] = {}
        if not ids or not variants:
            return found
        t = BenchmarkRow.__table__
        with self.db.sessions() as session:
            for chunk in chunks(ids):
                for row in session.execute(select(t.c.device_id, t.c.variant_id, t.c.event_id, t.c.ok, t.c.error,
                                                  t.c.p50_ms, t.c.p99_ms, t.c.agreement, t.c.peak_rss_mb, t.c.runtime, t.c.at)
                                           .where(t.c.device_id.in_(chunk), t.c.variant_id.in_(variants),
                                                  t.c.settings_key == "default")):
                    found.setdefault(row.device_id, {})[row.variant_id] = _light_report(row)
        return found

    def tuned_reports(self, device_ids: Iterable[str], variant_ids: Iterable[str]) -> dict[str, list[BenchmarkReport]]:
        """device -> its reports of these variants under tuned runtime settings (full bodies: few)."""
        ids, variants = list(dict.fromkeys(device_ids)), list(dict.fromkeys(variant_ids))
        found: dict[str, list[BenchmarkReport]] = {}
        if not ids or not variants:
            return found
        t = BenchmarkRow.__table__
        with self.db.sessions() as session:
            for chunk in chunks(ids):
                for device_id, report in session.execute(
                        select(t.c.device_id, t.c.report).where(t.c.device_id.in_(chunk), t.c.variant_id.in_(variants),
                                                                t.c.settings_key != "default")):
                    found.setdefault(device_id, []).append(BenchmarkReport.model_validate(report))
        return found

    def reported_variants(self, device_ids: Iterable[str]) -> dict[str, set[str]]:
        """device -> the variants it has a result for (no report bodies read)."""
        found: dict[str, set[str]] = {}
        with self.db.sessions() as session:
            for chunk in chunks(list(dict.fromkeys(device_ids))):
                for device_id, variant_id in session.execute(
                        select(BenchmarkRow.device_id, BenchmarkRow.variant_id)
                        .where(BenchmarkRow.device_id.in_(chunk), BenchmarkRow.settings_key == "default")):
                    found.setdefault(device_id, set()).add(variant_id)
        return found
