"""Fleet state in the registry database: enrolment, tags, device state, and (through the mixins)
events, desired states, aliases, rollouts, cohorts and the status views.

Event storage is idempotent: events carry ids chosen by the agent, and a re-delivered event
(QoS 1 means at least once) is a primary-key conflict that is skipped, never a duplicate row.
Writes a hub worker makes for a batch of messages are one transaction (`ingest`); writes made
elsewhere (a CLI command) append to the change log that the hub workers follow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, bindparam, delete, select, update
from sqlalchemy.orm import sessionmaker

from edgehub.hub.fleet.plans import PlanTables
from edgehub.hub.fleet.records import (
    ChangeKind,
    DeviceFacts,
    DeviceRecord,
    EnrollRequest,
    FleetError,
    device_record,
)
from edgehub.hub.fleet.rollouts import RolloutTables
from edgehub.hub.fleet.schema import ChangeRow, DesiredRow, DeviceRow, DeviceTagRow
from edgehub.hub.fleet.sql import chunks, insert_ignoring_duplicates
from edgehub.hub.fleet.traffic import TrafficTables
from edgehub.hub.fleet.views import ViewQueries
from edgehub.protocol.messages import DeviceState
from edgehub.zoo.db import make_engine
from edgehub.zoo.records import utcnow
from edgehub.zoo.schema import Base

CohortOf = Callable[[str, DeviceState], "str | None"]  # (profile, state) -> cohort key


# Device ids are broker user names: the hub and its workers log in as edgehub-hub[-N], so a device
# with such an id would be given (and could overwrite) a hub worker's credentials.
RESERVED_PREFIX = "edgehub-hub"


def refuse_reserved(device_ids: Iterable[str]) -> None:
    for device_id in device_ids:
        if device_id.startswith(RESERVED_PREFIX):
            raise FleetError(f"device id {device_id!r} is reserved: ids starting with {RESERVED_PREFIX!r} "
                             "are the hub's own broker users")


def _tag_rows(device_id: str, tags: Iterable[str]) -> list[dict]:
    return [{"device_id": device_id, "tag": t} for t in sorted(set(tags))]


class FleetStore(TrafficTables, PlanTables, RolloutTables, ViewQueries):
    """Devices and their traffic, behind the same SQLAlchemy URL as the registry."""

    def __init__(self, url: str | None = None, *, connect_args: dict[str, Any] | None = None,
                 engine: Engine | None = None):
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else make_engine(url, connect_args)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    @staticmethod
    def _note(session, kind: ChangeKind, keys: Iterable[str]) -> None:
        """Append to the change log (hub workers reconcile what it names)."""
        now = utcnow()
        rows = [{"kind": kind, "key": k, "at": now} for k in dict.fromkeys(keys)]
        if rows:
            session.execute(ChangeRow.__table__.insert(), rows)

    # -- devices ------------------------------------------------------------------------------

    def enroll(self, device_id: str, profile: str, password_hash: str, tags: list[str] | None = None,
               replace: bool = False) -> DeviceRecord:
        refuse_reserved([device_id])
        with self._sessions.begin() as session:
            row = session.get(DeviceRow, device_id)
            if row is not None and not replace:
                raise FleetError(f"device {device_id!r} is already enrolled; use --replace to issue new credentials")
            if row is None:
                row = DeviceRow(id=device_id, enrolled_at=utcnow(), online=False, simulated=False)
                session.add(row)
            row.profile, row.password_hash, row.tags = profile, password_hash, sorted(set(tags or []))
            session.flush()
            session.execute(delete(DeviceTagRow).where(DeviceTagRow.device_id == device_id))
            insert_ignoring_duplicates(session, DeviceTagRow.__table__, _tag_rows(device_id, row.tags))
            self._note(session, "device", [device_id])
        return self.get_device(device_id)

    def enroll_many(self, requests: list[EnrollRequest], *, simulated: bool = False, replace: bool = False) -> int:
        """Enrol many devices in one transaction (`edgehub fleet simulate`); returns how many are new.

        With `replace`, devices already enrolled get the new credentials, profile and tags.
        """
        refuse_reserved(r.id for r in requests)
        now = utcnow()
        with self._sessions.begin() as session:
            ids = [r.id for r in requests]
            existing = {i for chunk in chunks(ids) for i in session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(chunk)))}
            if existing and not replace:
                raise FleetError(f"{len(existing)} device(s) already enrolled (e.g. {min(existing)!r}); "
                                 "use --replace")
            new = [dict(id=r.id, profile=r.profile, password_hash=r.password_hash, tags=sorted(set(r.tags)),
                        enrolled_at=now, online=False, simulated=simulated) for r in requests if r.id not in existing]
            if new:
                session.execute(DeviceRow.__table__.insert(), new)
            again = [dict(b_id=r.id, profile=r.profile, password_hash=r.password_hash, tags=sorted(set(r.tags)),
                          simulated=simulated) for r in requests if r.id in existing]
            if again:
                table = DeviceRow.__table__
                session.execute(update(table).where(table.c.id == bindparam("b_id")).values(
                    profile=bindparam("profile"), password_hash=bindparam("password_hash"), tags=bindparam("tags"),
                    simulated=bindparam("simulated")), again)
                for chunk in chunks(sorted(existing)):
                    session.execute(delete(DeviceTagRow).where(DeviceTagRow.device_id.in_(chunk)))
            insert_ignoring_duplicates(session, DeviceTagRow.__table__,
                                       [t for r in requests for t in _tag_rows(r.id, r.tags)])
            self._note(session, "device", ids)
            return len(new)

    def revoke(self, device_id: str) -> None:
        with self._sessions.begin() as session:
            if session.get(DeviceRow, device_id) is None:
                raise FleetError(f"no device {device_id!r}")
            session.execute(delete(DesiredRow).where(DesiredRow.device_id == device_id))
            session.execute(delete(DeviceTagRow).where(DeviceTagRow.device_id == device_id))
            session.execute(delete(DeviceRow).where(DeviceRow.id == device_id))
            self._note(session, "device", [device_id])

    def set_tags(self, device_ids: list[str], add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[DeviceRecord]:
        """Add and remove tags (groups) on devices, in one transaction; unknown devices are an error."""
        add, remove = sorted(set(add)), set(remove)
        with self._sessions.begin() as session:
            rows = {r.id: r for chunk in chunks(device_ids)
                    for r in session.scalars(select(DeviceRow).where(DeviceRow.id.in_(chunk)))}
            missing = [d for d in device_ids if d not in rows]
            if missing:
                raise FleetError(f"no device {missing[0]!r}; see `edgehub fleet status`")
            for row in rows.values():
                row.tags = sorted((set(row.tags or []) | set(add)) - remove)
            session.flush()
            for chunk in chunks(sorted(rows)):
                session.execute(delete(DeviceTagRow).where(DeviceTagRow.device_id.in_(chunk)))
            insert_ignoring_duplicates(session, DeviceTagRow.__table__,
                                       [t for row in rows.values() for t in _tag_rows(row.id, row.tags)])
            self._note(session, "device", sorted(rows))
            return [device_record(rows[d]) for d in device_ids]

    def password_hash(self, device_id: str) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(DeviceRow.password_hash).where(DeviceRow.id == device_id))

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._sessions() as session:
            row = session.get(DeviceRow, device_id)
            return device_record(row) if row else None

    def devices(self, profile: str | None = None) -> list[DeviceRecord]:
        query = select(DeviceRow).order_by(DeviceRow.id)
        if profile:
            query = query.where(DeviceRow.profile == profile)
        with self._sessions() as session:
            return [device_record(r) for r in session.scalars(query)]

    def devices_by_ids(self, device_ids: Iterable[str]) -> dict[str, DeviceRecord]:
        with self._sessions() as session:
            return {r.id: device_record(r) for chunk in chunks(list(device_ids))
                    for r in session.scalars(select(DeviceRow).where(DeviceRow.id.in_(chunk)))}

    def device_facts(self, device_ids: Iterable[str]) -> dict[str, DeviceFacts]:
        t = DeviceRow.__table__
        with self._sessions() as session:
            return {r.id: DeviceFacts(id=r.id, profile=r.profile, tags=r.tags or [], online=bool(r.online),
                                      active_variant=r.active_variant, cohort=r.cohort)
                    for chunk in chunks(list(dict.fromkeys(device_ids)))
                    for r in session.execute(select(t.c.id, t.c.profile, t.c.tags, t.c.online, t.c.active_variant,
                                                    t.c.cohort).where(t.c.id.in_(chunk)))}

    def device_ids(self, *, profile: str | None = None, tag: str | None = None,
                   cohort: str | None = None) -> list[str]:
        """Ids of the devices matching every given condition (each one indexed), sorted."""
        query = select(DeviceRow.id)
        if profile:
            query = query.where(DeviceRow.profile == profile)
        if cohort:
            query = query.where(DeviceRow.cohort == cohort)
        if tag:
            query = query.join(DeviceTagRow, (DeviceTagRow.device_id == DeviceRow.id) & (DeviceTagRow.tag == tag))
        with self._sessions() as session:
            return list(session.scalars(query.order_by(DeviceRow.id)))

    # -- state --------------------------------------------------------------------------------

    def update_state(self, state: DeviceState, cohort_of: CohortOf | None = None) -> bool:
        """Store a device's reported state; False if the device is not enrolled."""
        return state.device_id not in self.ingest([state], [], cohort_of=cohort_of).unknown

    def _apply_states(self, session, states: list[DeviceState], cohort_of: CohortOf | None) -> tuple[set, set]:
        """Store states in order (the last one of a device wins); returns (changed, unknown) devices.

        A device changed when it came online, or its active variant or cohort changed: the hub
        reconciles it. The Last Will carries only `online: false`, so what we knew is kept then.
        """
        table = DeviceRow.__table__
        ids = list(dict.fromkeys(s.device_id for s in states))
        known = {r.id: r for chunk in chunks(ids) for r in session.execute(
            select(table.c.id, table.c.profile, table.c.online, table.c.state, table.c.active_variant,
                   table.c.cohort).where(table.c.id.in_(chunk)))}
        work = {i: dict(online=r.online, state=r.state, active_variant=r.active_variant, cohort=r.cohort)
                for i, r in known.items()}
        now, changed = utcnow(), set()
        for s in states:
            w = work.get(s.device_id)
            if w is None:
                continue
            came_online = s.online and not w["online"]
            if s.online or w["state"] is None:
                w["state"], w["active_variant"] = s.model_dump(mode="json"), s.active_variant
                cohort = cohort_of(known[s.device_id].profile, s) if cohort_of and s.hardware else None
                if cohort is not None:
                    w["cohort"] = cohort
            else:
                w["state"] = {**w["state"], "online": False}
            w["online"] = s.online
            before = known[s.device_id]
            if came_online or w["active_variant"] != before.active_variant or w["cohort"] != before.cohort:
                changed.add(s.device_id)
        if work:
            session.execute(update(table).where(table.c.id == bindparam("b_id")).values(
                online=bindparam("online"), state=bindparam("state"), active_variant=bindparam("active_variant"),
                cohort=bindparam("cohort"), last_seen=bindparam("last_seen")),
                [dict(b_id=i, last_seen=now, **w) for i, w in work.items()])
        return changed, set(ids) - set(known)
