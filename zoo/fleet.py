"""Fleet state in the registry database: enrolment, device state, events, desired states.

Event storage is idempotent: events carry ids chosen by the agent, and a re-delivered event
(QoS 1 means at least once) is a primary-key conflict that is skipped, never a duplicate row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select
from sqlalchemy.orm import sessionmaker

from edgehub.agent.messages import ActivationResult, BenchmarkReport, DesiredState, DeviceState
from edgehub.zoo.db import make_engine
from edgehub.zoo.fleet_schema import BenchmarkRow, DeploymentRow, DesiredRow, DeviceRow, EventRow, SelectionRow
from edgehub.zoo.records import utcnow
from edgehub.zoo.schema import Base


class FleetError(Exception):
    """A fleet operation that cannot be done (unknown or duplicate device, ...)."""


class DeviceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    profile: str
    tags: list[str] = []
    enrolled_at: datetime
    online: bool = False
    last_seen: datetime | None = None
    state: DeviceState | None = None
    active_variant: str | None = None


class SelectionRecord(BaseModel):
    device_id: str
    model: str
    version: int
    winner: str | None
    explanation: dict
    decided_at: datetime


def _device(row: DeviceRow) -> DeviceRecord:
    return DeviceRecord(
        id=row.id, profile=row.profile, tags=row.tags or [], enrolled_at=row.enrolled_at, online=row.online,
        last_seen=row.last_seen, state=DeviceState.model_validate(row.state) if row.state else None,
        active_variant=row.active_variant,
    )


def _insert_ignoring_duplicates(session, table, rows: list[dict]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL; returns rows inserted."""
    if not rows:
        return 0
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise FleetError(f"unsupported database {dialect}: use SQLite or PostgreSQL")
    result = session.execute(insert(table).on_conflict_do_nothing().returning(table.c[list(rows[0])[0]]), rows)
    return len(result.fetchall())


def _failed_activation_report(event: Any) -> BenchmarkReport | None:
    """A variant that failed its health check after activation counts as failed on that device."""
    if not isinstance(event, ActivationResult) or event.ok:
        return None
    return BenchmarkReport(event_id=event.event_id, device_id=event.device_id, generation=event.generation,
                           variant_id=event.variant_id, ok=False, at=event.at,
                           error=f"failed after activation: {event.error or 'unknown error'}")


class FleetStore:
    """Devices and their traffic, behind the same SQLAlchemy URL as the registry."""

    def __init__(self, url: str, *, connect_args: dict[str, Any] | None = None):
        self.engine = make_engine(url, connect_args)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- devices ------------------------------------------------------------------------------

    def enroll(self, device_id: str, profile: str, password_hash: str, tags: list[str] | None = None,
               replace: bool = False) -> DeviceRecord:
        with self._sessions.begin() as session:
            row = session.get(DeviceRow, device_id)
            if row is not None and not replace:
                raise FleetError(f"device {device_id!r} is already enrolled; use --replace to issue new credentials")
            if row is None:
                row = DeviceRow(id=device_id, enrolled_at=utcnow(), online=False)
                session.add(row)
            row.profile, row.password_hash, row.tags = profile, password_hash, sorted(set(tags or []))
        return self.get_device(device_id)

    def revoke(self, device_id: str) -> None:
        with self._sessions.begin() as session:
            if session.get(DeviceRow, device_id) is None:
                raise FleetError(f"no device {device_id!r}")
            session.execute(delete(DesiredRow).where(DesiredRow.device_id == device_id))
            session.execute(delete(DeviceRow).where(DeviceRow.id == device_id))

    def password_hash(self, device_id: str) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(DeviceRow.password_hash).where(DeviceRow.id == device_id))

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._sessions() as session:
            row = session.get(DeviceRow, device_id)
            return _device(row) if row else None

    def devices(self, profile: str | None = None) -> list[DeviceRecord]:
        query = select(DeviceRow).order_by(DeviceRow.id)
        if profile:
            query = query.where(DeviceRow.profile == profile)
        with self._sessions() as session:
            return [_device(r) for r in session.scalars(query)]

    def update_state(self, state: DeviceState) -> bool:
        """Store a device's reported state; False if the device is not enrolled."""
        with self._sessions.begin() as session:
            row = session.get(DeviceRow, state.device_id)
            if row is None:
                return False
            row.online = state.online
            row.last_seen = utcnow()
            # The Last Will carries only `online: false`: keep the rest of what we knew.
            if state.online or row.state is None:
                row.state = state.model_dump(mode="json")
                row.active_variant = state.active_variant
            else:
                row.state = {**row.state, "online": False}
            return True

    # -- events -------------------------------------------------------------------------------

    def record_events(self, events: Iterable[BenchmarkReport | Any]) -> int:
        """Store events once each (by event id), in one transaction; returns how many were new.

        Benchmark reports also become the device's newest result for that variant.
        """
        events = list(events)
        if not events:
            return 0
        now = utcnow()
        rows = [dict(event_id=e.event_id, device_id=e.device_id, kind=e.kind, generation=e.generation,
                     variant_id=getattr(e, "variant_id", None), body=e.model_dump(mode="json"), received_at=now)
                for e in events]
        with self._sessions.begin() as session:
            new = _insert_ignoring_duplicates(session, EventRow.__table__, rows)
            for e in events:
                report = e if isinstance(e, BenchmarkReport) else _failed_activation_report(e)
                if report is None:
                    continue
                current = session.get(BenchmarkRow, (report.device_id, report.variant_id))
                if current is None:
                    session.add(BenchmarkRow(device_id=report.device_id, variant_id=report.variant_id,
                                             event_id=report.event_id, report=report.model_dump(mode="json"),
                                             at=report.at))
                elif current.at <= report.at:
                    current.event_id, current.report, current.at = report.event_id, report.model_dump(mode="json"), report.at
        return new

    def events(self, device_id: str | None = None) -> list[dict]:
        query = select(EventRow).order_by(EventRow.received_at, EventRow.event_id)
        if device_id:
            query = query.where(EventRow.device_id == device_id)
        with self._sessions() as session:
            return [r.body for r in session.scalars(query)]

    def count_events(self) -> int:
        from sqlalchemy import func

        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(EventRow)) or 0

    def reports(self, device_id: str, variant_ids: Iterable[str]) -> dict[str, BenchmarkReport]:
        ids = list(variant_ids)
        with self._sessions() as session:
            rows = session.scalars(select(BenchmarkRow).where(BenchmarkRow.device_id == device_id,
                                                              BenchmarkRow.variant_id.in_(ids)))
            return {r.variant_id: BenchmarkReport.model_validate(r.report) for r in rows}

    # -- desired state, deployments, selections ----------------------------------------------------

    def desired(self, device_id: str) -> DesiredState | None:
        with self._sessions() as session:
            row = session.get(DesiredRow, device_id)
            return DesiredState.model_validate(row.body) if row else None

    def set_desired(self, desired: DesiredState) -> None:
        with self._sessions.begin() as session:
            row = session.get(DesiredRow, desired.device_id)
            if row is None:
                row = DesiredRow(device_id=desired.device_id)
                session.add(row)
            row.generation, row.body, row.updated_at = desired.generation, desired.model_dump(mode="json"), utcnow()

    def deploy(self, model: str, version: int, profiles: Iterable[str]) -> None:
        with self._sessions.begin() as session:
            for profile in dict.fromkeys(profiles):
                session.add(DeploymentRow(model=model, version=version, profile=profile, created_at=utcnow()))

    def deployment_for(self, profile: str) -> tuple[str, int] | None:
        with self._sessions() as session:
            row = session.scalars(select(DeploymentRow).where(DeploymentRow.profile == profile)
                                  .order_by(DeploymentRow.id.desc()).limit(1)).first()
            return (row.model, row.version) if row else None

    def save_selection(self, record: SelectionRecord) -> None:
        with self._sessions.begin() as session:
            session.merge(SelectionRow(**record.model_dump()))

    def selection(self, device_id: str) -> SelectionRecord | None:
        with self._sessions() as session:
            row = session.get(SelectionRow, device_id)
            if row is None:
                return None
            return SelectionRecord(device_id=row.device_id, model=row.model, version=row.version, winner=row.winner,
                                   explanation=row.explanation, decided_at=row.decided_at)
