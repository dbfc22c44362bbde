"""What the hub decides: desired states, deployments and aliases, selections, cohort samples and
decisions, and the change log that tells hub workers which devices to reconcile."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select

from edgehub.hub.fleet.db import FleetDb, note_change
from edgehub.hub.fleet.records import (
    AliasRecord,
    ChangeRecord,
    CohortDecisionRecord,
    DesiredSummary,
    RolloutOutcome,
    SelectionRecord,
    SlotSummary,
)
from edgehub.hub.fleet.schema import (
    AliasRow,
    ChangeRow,
    CohortDecisionRow,
    CohortSampleRow,
    DeploymentRow,
    DesiredRow,
    RolloutDeviceRow,
    SelectionRow,
)
from edgehub.hub.fleet.sql import chunks, insert_ignoring_duplicates, upsert
from edgehub.hub.fleet.traffic import record_outcomes
from edgehub.protocol.messages import BenchmarkSettings, DesiredState
from edgehub.zoo.records import utcnow

CohortKey = tuple[str, str, int]  # (cohort, model, version)


def _desired_row(d: DesiredState, now: datetime) -> dict:
    summary = DesiredSummary.of(d)
    return dict(device_id=d.device_id, generation=d.generation, body=d.model_dump(mode="json"), updated_at=now,
                model=summary.model, version=summary.version, activate=summary.activate,
                candidate_ids=list(summary.candidate_ids), benchmark=d.benchmark.model_dump(mode="json"),
                slots=[s.model_dump(mode="json") for s in summary.slots] if d.slots is not None else None)


def _selection_row(s: SelectionRecord) -> dict:
    return {**s.model_dump(), "digest": s.digest()}


def write_alias(session, scope: str, name: str, model: str, version: int, now: datetime) -> None:
    upsert(session, AliasRow.__table__, [dict(scope=scope, name=name, model=model, version=version,
                                              updated_at=now)], ["scope", "name", "model"])
    kind, key = scope.split(":", 1)
    if kind == "profile" and name == "production":  # the profile's deployment history agrees
        session.add(DeploymentRow(model=model, version=version, profile=key, created_at=now))
    note_change(session, kind, [key])


def remove_alias(session, scope: str, name: str, model: str | None = None) -> bool:
    """Remove the scope's alias `name` of `model` (None: of every model)."""
    query = delete(AliasRow).where(AliasRow.scope == scope, AliasRow.name == name)
    if model is not None:
        query = query.where(AliasRow.model == model)
    gone = session.execute(query).rowcount
    if gone:
        kind, key = scope.split(":", 1)
        note_change(session, kind, [key])
    return bool(gone)


class PlanTables:
    """The hub's decisions: desired states, deployments, aliases, selections, cohorts, the change log."""

    def __init__(self, db: FleetDb):
        self.db = db

    # -- desired states ---------------------------------------------------------------------------

    def desired(self, device_id: str) -> DesiredState | None:
        with self.db.sessions() as session:
            row = session.get(DesiredRow, device_id)
            return DesiredState.model_validate(row.body) if row else None

    def set_desired(self, desired: DesiredState) -> None:
        self.save_plans(desired=[desired])

    def desired_summaries(self, device_ids: Iterable[str]) -> dict[str, DesiredSummary]:
        t = DesiredRow.__table__
        found = {}
        with self.db.sessions() as session:
            for chunk in chunks(list(dict.fromkeys(device_ids))):
                for r in session.execute(select(t.c.device_id, t.c.generation, t.c.model, t.c.version, t.c.activate,
                                                t.c.candidate_ids, t.c.benchmark, t.c.slots)
                                         .where(t.c.device_id.in_(chunk))):
                    found[r.device_id] = DesiredSummary(
                        generation=r.generation, model=r.model, version=r.version,
                        candidate_ids=tuple(r.candidate_ids or ()), activate=r.activate,
                        benchmark=BenchmarkSettings.model_validate(r.benchmark or {}),
                        slots=tuple(SlotSummary.model_validate(s) for s in r.slots or ()),
                        protocol=2 if r.slots is not None else 1)
        return found

    def desired_pages(self, device_ids: Iterable[str] | None = None, page: int = 500) -> Iterable[list[dict]]:
        """Stored desired bodies, a page at a time (for re-publishing after a reconnect)."""
        t = DesiredRow.__table__
        if device_ids is not None:
            for chunk in chunks(list(device_ids), page):
                with self.db.sessions() as session:
                    yield [r[0] for r in session.execute(select(t.c.body).where(t.c.device_id.in_(chunk)))]
            return
        after = ""
        while True:
            with self.db.sessions() as session:
                rows = session.execute(select(t.c.device_id, t.c.body).where(t.c.device_id > after)
                                       .order_by(t.c.device_id).limit(page)).all()
            if not rows:
                return
            after = rows[-1][0]
            yield [r[1] for r in rows]

    # -- deployments and aliases -------------------------------------------------------------------

    def deploy(self, model: str, version: int, profiles: Iterable[str]) -> None:
        """Target a version at profiles: a deployment row (history) and the profile's `production` alias."""
        now = utcnow()
        profiles = list(dict.fromkeys(profiles))
        with self.db.sessions.begin() as session:
            for profile in profiles:
                session.add(DeploymentRow(model=model, version=version, profile=profile, created_at=now))
            upsert(session, AliasRow.__table__, [dict(scope=f"profile:{p}", name="production", model=model,
                                                      version=version, updated_at=now) for p in profiles],
                   ["scope", "name", "model"])
            note_change(session, "profile", profiles)

    def deployment_for(self, profile: str, model: str | None = None) -> tuple[str, int] | None:
        """What the profile runs in production: its `production` alias (of `model`; without one,
        the newest), the one source of truth (what devices are targeted at, hub/control/targets.py).
        Deployment rows are the history."""
        query = select(AliasRow).where(AliasRow.scope == f"profile:{profile}", AliasRow.name == "production")
        if model is not None:
            query = query.where(AliasRow.model == model)
        with self.db.sessions() as session:
            row = session.scalars(query.order_by(AliasRow.updated_at.desc()).limit(1)).first()
            return (row.model, row.version) if row else None

    def set_alias(self, scope: str, name: str, model: str, version: int) -> AliasRecord:
        now = utcnow()
        with self.db.sessions.begin() as session:
            write_alias(session, scope, name, model, version, now)
        return AliasRecord(scope=scope, name=name, model=model, version=version, updated_at=now)

    def delete_alias(self, scope: str, name: str, model: str | None = None) -> bool:
        with self.db.sessions.begin() as session:
            return remove_alias(session, scope, name, model)

    def aliases(self, scope: str | None = None) -> list[AliasRecord]:
        query = select(AliasRow).order_by(AliasRow.scope, AliasRow.name)
        if scope:
            query = query.where(AliasRow.scope == scope)
        with self.db.sessions() as session:
            return [AliasRecord(scope=r.scope, name=r.name, model=r.model, version=r.version, updated_at=r.updated_at)
                    for r in session.scalars(query)]

    # -- selections ---------------------------------------------------------------------------------

    def save_selection(self, record: SelectionRecord) -> None:
        self.save_plans(selections=[record])

    def selection(self, device_id: str, model: str | None = None) -> SelectionRecord | None:
        """The device's selection for `model`; without a model, its first slot's."""
        found = self.selections_many([device_id]).get(device_id, [])
        if model is None:
            with self.db.sessions() as session:
                model = session.scalar(select(DesiredRow.model).where(DesiredRow.device_id == device_id))
        return next((s for s in found if s.model == model), found[0] if found else None)

    def selections_many(self, device_ids: Iterable[str]) -> dict[str, list[SelectionRecord]]:
        """device -> its selections, one per model slot, by model name."""
        found: dict[str, list[SelectionRecord]] = {}
        with self.db.sessions() as session:
            for chunk in chunks(list(dict.fromkeys(device_ids))):
                for r in session.scalars(select(SelectionRow).where(SelectionRow.device_id.in_(chunk))
                                         .order_by(SelectionRow.model)):
                    found.setdefault(r.device_id, []).append(SelectionRecord(
                        device_id=r.device_id, model=r.model, version=r.version, winner=r.winner,
                        explanation=r.explanation, decided_at=r.decided_at))
        return found

    def selection_digests(self, device_ids: Iterable[str]) -> dict[tuple[str, str], str | None]:
        """(device, model) -> digest of its stored selection (no explanation bodies read)."""
        t = SelectionRow.__table__
        with self.db.sessions() as session:
            return {(d, m): digest for chunk in chunks(list(dict.fromkeys(device_ids)))
                    for d, m, digest in session.execute(select(t.c.device_id, t.c.model, t.c.digest)
                                                        .where(t.c.device_id.in_(chunk)))}

    # -- cohorts --------------------------------------------------------------------------------------

    def cohort_samples(self, keys: Iterable[CohortKey]) -> dict[CohortKey, dict[str, str]]:
        """(cohort, model, version) -> {sampled device: why it was sampled}."""
        keys = set(keys)
        found: dict[CohortKey, dict[str, str]] = {k: {} for k in keys}
        with self.db.sessions() as session:
            for chunk in chunks(sorted({k[0] for k in keys})):
                for r in session.scalars(select(CohortSampleRow).where(CohortSampleRow.cohort.in_(chunk))):
                    if (r.cohort, r.model, r.version) in keys:
                        found[(r.cohort, r.model, r.version)][r.device_id] = r.reason
        return found

    def cohort_decisions(self, keys: Iterable[CohortKey]) -> dict[CohortKey, CohortDecisionRecord]:
        keys = set(keys)
        found = {}
        with self.db.sessions() as session:
            for chunk in chunks(sorted({k[0] for k in keys})):
                for r in session.scalars(select(CohortDecisionRow).where(CohortDecisionRow.cohort.in_(chunk))):
                    if (r.cohort, r.model, r.version) in keys:
                        found[(r.cohort, r.model, r.version)] = CohortDecisionRecord(
                            cohort=r.cohort, model=r.model, version=r.version, winner=r.winner,
                            reports_used=r.reports_used, explanation=r.explanation, decided_at=r.decided_at)
        return found

    # -- one reconcile batch --------------------------------------------------------------------------

    def save_plans(self, *, desired: Iterable[DesiredState] = (), selections: Iterable[SelectionRecord] = (),
                   samples: Iterable[tuple[CohortKey, str, str]] = (),
                   decisions: Iterable[CohortDecisionRecord] = (), outcomes: Iterable[RolloutOutcome] = (),
                   members: Iterable[tuple[int, str, int]] = (), left: Iterable[tuple[int, str]] = (),
                   changes: Iterable[tuple[str, str]] = ()) -> None:
        """Everything one reconcile batch decided, in one transaction.

        A cohort decision only replaces one made from fewer reports, so two workers deciding
        the same cohort at once keep the better-informed result.
        """
        now = utcnow()
        with self.db.sessions.begin() as session:
            upsert(session, DesiredRow.__table__, [_desired_row(d, now) for d in desired], ["device_id"])
            upsert(session, SelectionRow.__table__, [_selection_row(s) for s in selections], ["device_id", "model"])
            insert_ignoring_duplicates(session, CohortSampleRow.__table__, [
                dict(cohort=k[0], model=k[1], version=k[2], device_id=d, reason=why, added_at=now)
                for k, d, why in samples])
            upsert(session, CohortDecisionRow.__table__, [d.model_dump() for d in decisions],
                   ["cohort", "model", "version"], where=lambda t, new: t.c.reports_used <= new.reports_used)
            insert_ignoring_duplicates(session, RolloutDeviceRow.__table__, [
                dict(rollout_id=r, device_id=d, stage=s, status="pending", updated_at=now) for r, d, s in members])
            for rollout_id, device_id in left:
                session.execute(delete(RolloutDeviceRow).where(RolloutDeviceRow.rollout_id == rollout_id,
                                                               RolloutDeviceRow.device_id == device_id))
            record_outcomes(session, list(outcomes))
            for kind, key in changes:
                note_change(session, kind, [key])

    # -- the change log -------------------------------------------------------------------------------

    def last_change_id(self) -> int:
        with self.db.sessions() as session:
            return session.scalar(select(func.max(ChangeRow.id))) or 0

    def changes_after(self, after_id: int, limit: int = 50_000) -> list[ChangeRecord]:
        with self.db.sessions() as session:
            return [ChangeRecord(id=r.id, kind=r.kind, key=r.key) for r in session.execute(
                select(ChangeRow.id, ChangeRow.kind, ChangeRow.key).where(ChangeRow.id > after_id)
                .order_by(ChangeRow.id).limit(limit))]

    def prune_changes(self, before: datetime) -> int:
        with self.db.sessions.begin() as session:
            return session.execute(delete(ChangeRow).where(ChangeRow.at < before)).rowcount or 0
