"""Rollouts in the database: the state (hub/rollout/machine.py's RolloutState as JSON), the members with
their stage and outcome, and the alias moves that go with each step, written together."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select, update

from edgehub.hub.fleet.db import FleetDb, note_change
from edgehub.hub.fleet.plans import remove_alias, write_alias
from edgehub.hub.fleet.records import ACTIVE_ROLLOUT, FleetError, RolloutRecord
from edgehub.hub.fleet.schema import RolloutDeviceRow, RolloutRow
from edgehub.hub.fleet.sql import chunks
from edgehub.zoo.records import utcnow

ACTIVE = ACTIVE_ROLLOUT


def _record(r: RolloutRow) -> RolloutRecord:
    return RolloutRecord(id=r.id, model=r.model, version=r.version, selector=r.selector, status=r.status,
                         stage=r.stage, state=r.state, created_at=r.created_at, updated_at=r.updated_at)


def _apply_alias_effects(session, scope: str, effects: Iterable[dict], now: datetime) -> None:
    for e in effects:
        if e["action"] == "set":
            write_alias(session, scope, e["name"], e["model"], e["version"], now)
        else:
            remove_alias(session, scope, e["name"], e.get("model"))



class RolloutTables:
    """Rollouts, their members and outcomes."""

    def __init__(self, db: FleetDb):
        self.db = db

    def create_rollout(self, *, model: str, version: int, selector: str, scope: str, state: dict,
                       members: dict[str, int], alias_effects: Iterable[dict] = ()) -> int:
        """Store a new rollout with its members (device -> stage); one active rollout per group."""
        now = utcnow()
        with self.db.sessions.begin() as session:
            running = session.scalar(select(RolloutRow.id).where(RolloutRow.selector == selector,
                                                                 RolloutRow.status.in_(ACTIVE)))
            if running is not None:
                raise FleetError(f"rollout #{running} is already active on group {selector}: "
                                 f"`edgehub rollout abort {running}` first")
            row = RolloutRow(model=model, version=version, selector=selector, status=state["status"],
                             stage=state["stage"], state=state, created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            for chunk in chunks(sorted(members.items()), 1000):
                session.execute(RolloutDeviceRow.__table__.insert(), [
                    dict(rollout_id=row.id, device_id=d, stage=s, status="pending", updated_at=now) for d, s in chunk])
            _apply_alias_effects(session, scope, alias_effects, now)
            note_change(session, "rollout", [str(row.id)])
            return row.id

    def save_rollout(self, rollout_id: int, *, expected: tuple[str, int], state: dict, scope: str,
                     alias_effects: Iterable[dict] = (), only_stage: int | None = None) -> bool:
        """Move a rollout to `state` if it is still at `expected` (status, stage): False if someone
        else (the operator, another hub) moved it first. `only_stage`: only that stage's members
        have a new target (an advance), so only they are named in the change log."""
        now = utcnow()
        with self.db.sessions.begin() as session:
            moved = session.execute(update(RolloutRow).where(
                RolloutRow.id == rollout_id, RolloutRow.status == expected[0], RolloutRow.stage == expected[1])
                .values(status=state["status"], stage=state["stage"], state=state, updated_at=now)).rowcount
            if not moved:
                return False
            _apply_alias_effects(session, scope, alias_effects, now)
            note_change(session, "rollout", [str(rollout_id) if only_stage is None else f"{rollout_id}:{only_stage}"])
            return True

    def get_rollout(self, rollout_id: int) -> RolloutRecord | None:
        with self.db.sessions() as session:
            row = session.get(RolloutRow, rollout_id)
            return _record(row) if row else None

    def rollouts(self, *, active_only: bool = False, model: str | None = None) -> list[RolloutRecord]:
        query = select(RolloutRow).order_by(RolloutRow.id)
        if active_only:
            query = query.where(RolloutRow.status.in_(ACTIVE))
        if model:
            query = query.where(RolloutRow.model == model)
        with self.db.sessions() as session:
            return [_record(r) for r in session.scalars(query)]

    def rollout_counts(self, rollout_id: int) -> dict[int, dict[str, int]]:
        """stage -> {status: devices}: one GROUP BY on the (rollout, stage, status) index."""
        t = RolloutDeviceRow.__table__
        counts: dict[int, dict[str, int]] = {}
        with self.db.sessions() as session:
            for stage, status, n in session.execute(select(t.c.stage, t.c.status, func.count())
                                                    .where(t.c.rollout_id == rollout_id)
                                                    .group_by(t.c.stage, t.c.status)):
                counts.setdefault(stage, {})[status] = n
        return counts

    def rollout_members(self, device_ids: Iterable[str]) -> dict[str, list[tuple[int, int, str]]]:
        """device -> [(rollout id, stage, status)] over active rollouts."""
        t, r = RolloutDeviceRow.__table__, RolloutRow.__table__
        found: dict[str, list[tuple[int, int, str]]] = {}
        with self.db.sessions() as session:
            for chunk in chunks(list(dict.fromkeys(device_ids))):
                for row in session.execute(select(t.c.device_id, t.c.rollout_id, t.c.stage, t.c.status)
                                           .join(r, r.c.id == t.c.rollout_id)
                                           .where(t.c.device_id.in_(chunk), r.c.status.in_(ACTIVE))):
                    found.setdefault(row.device_id, []).append((row.rollout_id, row.stage, row.status))
        return found

    def rollout_member_ids(self, rollout_id: int, stages: Iterable[int] | None = None) -> list[str]:
        t = RolloutDeviceRow.__table__
        query = select(t.c.device_id).where(t.c.rollout_id == rollout_id)
        if stages is not None:
            query = query.where(t.c.stage.in_(list(stages)))
        with self.db.sessions() as session:
            return list(session.scalars(query.order_by(t.c.device_id)))

    def rollout_timeline(self, rollout_id: int) -> list[tuple[datetime, str]]:
        """(when, status) of every member that has an outcome, oldest first (progress over time)."""
        t = RolloutDeviceRow.__table__
        with self.db.sessions() as session:
            return [(at, status) for at, status in session.execute(
                select(t.c.updated_at, t.c.status).where(t.c.rollout_id == rollout_id, t.c.status != "pending")
                .order_by(t.c.updated_at))]
