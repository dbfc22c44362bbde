"""Enrolled devices: credentials, profile, tags, and the state they report.

Device ids are broker user names: the hub and its workers log in as edgehub-hub[-N], so a device
with such an id would be given (and could overwrite) a hub worker's credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import bindparam, delete, select, update

from edgehub.hub.fleet.db import FleetDb, note_change
from edgehub.hub.fleet.records import DeviceFacts, DeviceRecord, EnrollRequest, FleetError, device_record
from edgehub.hub.fleet.schema import DesiredRow, DeviceRow, DeviceTagRow
from edgehub.hub.fleet.sql import chunks, insert_ignoring_duplicates
from edgehub.protocol.messages import DeviceState
from edgehub.zoo.records import utcnow

CohortOf = Callable[[str, DeviceState], "str | None"]  # (profile, state) -> cohort key

RESERVED_PREFIX = "edgehub-hub"


def refuse_reserved(device_ids: Iterable[str]) -> None:
    for device_id in device_ids:
        if device_id.startswith(RESERVED_PREFIX):
            raise FleetError(f"device id {device_id!r} is reserved: ids starting with {RESERVED_PREFIX!r} "
                             "are the hub's own broker users")


def _tag_rows(device_id: str, tags: Iterable[str]) -> list[dict]:
    return [{"device_id": device_id, "tag": t} for t in sorted(set(tags))]


def apply_states(session, states: list[DeviceState], cohort_of: CohortOf | None) -> tuple[set, set]:
    """Store states in order (the last one of a device wins); returns (changed, unknown) devices.

    A device changed when it came online, or its active variant or cohort changed: the hub
    reconciles it. The Last Will carries only `online: false`, so what we knew is kept then.
    """
    table = DeviceRow.__table__
    ids = list(dict.fromkeys(s.device_id for s in states))
    known = {r.id: r for chunk in chunks(ids) for r in session.execute(
        select(table.c.id, table.c.profile, table.c.online, table.c.state, table.c.active_variant,
               table.c.cohort, table.c.protocol, table.c.active_variants).where(table.c.id.in_(chunk)))}
    work = {i: dict(online=r.online, state=r.state, active_variant=r.active_variant, cohort=r.cohort,
                    protocol=r.protocol or 1, active_variants=r.active_variants) for i, r in known.items()}
    now, changed = utcnow(), set()
    for s in states:
        w = work.get(s.device_id)
        if w is None:
            continue
        came_online = s.online and not w["online"]
        if s.online or w["state"] is None:
            w["state"], w["active_variant"] = s.model_dump(mode="json"), s.active_variant
            w["protocol"], w["active_variants"] = s.schema_version, s.active_variants
            cohort = cohort_of(known[s.device_id].profile, s) if cohort_of and s.hardware else None
            if cohort is not None:
                w["cohort"] = cohort
        else:
            w["state"] = {**w["state"], "online": False}
        w["online"] = s.online
        before = known[s.device_id]
        if came_online or w["active_variant"] != before.active_variant or w["cohort"] != before.cohort \
                or w["protocol"] != (before.protocol or 1) or w["active_variants"] != before.active_variants:
            changed.add(s.device_id)
    if work:
        session.execute(update(table).where(table.c.id == bindparam("b_id")).values(
            online=bindparam("online"), state=bindparam("state"), active_variant=bindparam("active_variant"),
            cohort=bindparam("cohort"), last_seen=bindparam("last_seen"), protocol=bindparam("protocol"),
            active_variants=bindparam("active_variants")),
            [dict(b_id=i, last_seen=now, **w) for i, w in work.items()])
    return changed, set(ids) - set(known)


class DeviceTable:
    """Enrolment, revocation, tags and device lookups."""

    def __init__(self, db: FleetDb):
        self.db = db

    def enroll(self, device_id: str, profile: str, password_hash: str, tags: list[str] | None = None,
               replace: bool = False) -> DeviceRecord:
        refuse_reserved([device_id])
        with self.db.sessions.begin() as session:
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
            note_change(session, "device", [device_id])
        return self.get_device(device_id)

    def enroll_many(self, requests: list[EnrollRequest], *, simulated: bool = False, replace: bool = False) -> int:
        """Enrol many devices in one transaction (`edgehub fleet simulate`); returns how many are new.

        With `replace`, devices already enrolled get the new credentials, profile and tags.
        """
        refuse_reserved(r.id for r in requests)
        now = utcnow()
        with self.db.sessions.begin() as session:
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
            note_change(session, "device", ids)
            return len(new)

    def revoke(self, device_id: str) -> None:
        with self.db.sessions.begin() as session:
            if session.get(DeviceRow, device_id) is None:
                raise FleetError(f"no device {device_id!r}")
            session.execute(delete(DesiredRow).where(DesiredRow.device_id == device_id))
            session.execute(delete(DeviceTagRow).where(DeviceTagRow.device_id == device_id))
            session.execute(delete(DeviceRow).where(DeviceRow.id == device_id))
            note_change(session, "device", [device_id])

    def set_tags(self, device_ids: list[str], add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[DeviceRecord]:
        """Add and remove tags (groups) on devices, in one transaction; unknown devices are an error."""
        add, remove = sorted(set(add)), set(remove)
        with self.db.sessions.begin() as session:
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
            note_change(session, "device", sorted(rows))
            return [device_record(rows[d]) for d in device_ids]

    def password_hash(self, device_id: str) -> str | None:
        with self.db.sessions() as session:
            return session.scalar(select(DeviceRow.password_hash).where(DeviceRow.id == device_id))

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self.db.sessions() as session:
            row = session.get(DeviceRow, device_id)
            return device_record(row) if row else None

    def devices(self, profile: str | None = None) -> list[DeviceRecord]:
        query = select(DeviceRow).order_by(DeviceRow.id)
        if profile:
            query = query.where(DeviceRow.profile == profile)
        with self.db.sessions() as session:
            return [device_record(r) for r in session.scalars(query)]

    def devices_by_ids(self, device_ids: Iterable[str]) -> dict[str, DeviceRecord]:
        with self.db.sessions() as session:
            return {r.id: device_record(r) for chunk in chunks(list(device_ids))
                    for r in session.scalars(select(DeviceRow).where(DeviceRow.id.in_(chunk)))}

    def device_facts(self, device_ids: Iterable[str]) -> dict[str, DeviceFacts]:
        t = DeviceRow.__table__
        with self.db.sessions() as session:
            return {r.id: DeviceFacts(id=r.id, profile=r.profile, tags=r.tags or [], online=bool(r.online),
                                      active_variant=r.active_variant, cohort=r.cohort, protocol=r.protocol or 1,
                                      active_variants=r.active_variants or [], cores=r.cores,
                                      runtimes=r.runtimes if isinstance(r.runtimes, dict) else {})
                    for chunk in chunks(list(dict.fromkeys(device_ids)))
                    for r in session.execute(select(t.c.id, t.c.profile, t.c.tags, t.c.online, t.c.active_variant,
                                                    t.c.cohort, t.c.protocol, t.c.active_variants,
                                                    t.c.state["hardware"]["cores"].as_integer().label("cores"),
                                                    t.c.state["runtimes"].label("runtimes"))
                                             .where(t.c.id.in_(chunk)))}

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
        with self.db.sessions() as session:
            return list(session.scalars(query.order_by(DeviceRow.id)))
