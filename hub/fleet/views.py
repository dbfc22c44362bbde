"""The fleet as people and scripts see it: one joined, indexed query for the device rows and a
few GROUP BYs for the summary, whatever the fleet's size (no query per device)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, case, exists, func, or_, select

from edgehub.hub.fleet.db import FleetDb
from edgehub.hub.fleet.records import ACTIVE_ROLLOUT
from edgehub.hub.fleet.rollouts import RolloutTables
from edgehub.hub.fleet.schema import (
    BenchmarkRow,
    DesiredRow,
    DeviceFieldRow,
    DeviceRow,
    DeviceTagRow,
    EventRow,
    EventStreamRow,
    RolloutDeviceRow,
    RolloutRow,
    SelectionRow,
)
from edgehub.hub.fleet.sql import chunks
from edgehub.protocol.telemetry import DRIFT_ALERT_PSI
from edgehub.zoo.schema import ModelRow, ModelVersionRow, VariantRow

ACTIVE = ACTIVE_ROLLOUT


class StatusFilter(BaseModel):
    """Which devices a view covers; every field is an indexed condition."""

    model_config = ConfigDict(frozen=True)

    profile: str | None = None
    group: str | None = None  # a tag
    online: bool | None = None
    rollout: int | None = None
    simulated: bool | None = None
    cohort: str | None = None
    device: str | None = None  # one device (its page)

    def apply(self, query, d=DeviceRow.__table__):
        if self.device:
            query = query.where(d.c.id == self.device)
        if self.profile:
            query = query.where(d.c.profile == self.profile)
        if self.online is not None:
            query = query.where(d.c.online == self.online)
        if self.simulated is not None:
            query = query.where(d.c.simulated == self.simulated)
        if self.cohort:
            query = query.where(d.c.cohort == self.cohort)
        if self.group:
            t = DeviceTagRow.__table__
            query = query.join(t, and_(t.c.device_id == d.c.id, t.c.tag == self.group))
        if self.rollout is not None:
            r = RolloutDeviceRow.__table__
            query = query.join(r, and_(r.c.device_id == d.c.id, r.c.rollout_id == self.rollout))
        return query


class ViewQueries:
    """Status rows and summary counts (read only)."""

    def __init__(self, db: FleetDb, rollouts: RolloutTables):
        self.db, self.rollouts = db, rollouts

    def status_rows(self, where: StatusFilter | None = None, *, limit: int | None = None,
                    offset: int = 0) -> list[dict[str, Any]]:
        where = where or StatusFilter()
        d, s, b, q = DeviceRow.__table__, SelectionRow.__table__, BenchmarkRow.__table__, DesiredRow.__table__
        e, f = EventStreamRow.__table__, DeviceFieldRow.__table__
        query = where.apply(
            select(d.c.id, d.c.profile, d.c.online, d.c.last_seen, d.c.active_variant, d.c.active_variants,
                   d.c.simulated, d.c.cohort,
                   d.c.tags, d.c.state["runtimes"].label("runtimes"), s.c.winner, b.c.p50_ms, b.c.runtime,
                   q.c.generation, q.c.model, q.c.version, q.c.slots, e.c.received, e.c.missing,
                   f.c.requests_per_min, f.c.error_rate, f.c.p99_ms.label("field_p99_ms"), f.c.drift,
                   f.c.end.label("field_at"))
            .select_from(d)
            .outerjoin(q, q.c.device_id == d.c.id)
            # The first slot's selection, benchmark and field figures; every slot's in "models".
            .outerjoin(s, and_(s.c.device_id == d.c.id, or_(s.c.model == q.c.model, q.c.model.is_(None))))
            .outerjoin(b, and_(b.c.device_id == d.c.id, b.c.variant_id == d.c.active_variant,
                               b.c.settings_key == "default"))
            .outerjoin(e, e.c.device_id == d.c.id)
            .outerjoin(f, and_(f.c.device_id == d.c.id, f.c.variant_id == d.c.active_variant))
        ).order_by(d.c.id).offset(offset)
        page = where.apply(select(d.c.id).select_from(d)).order_by(d.c.id).offset(offset)
        if limit is not None:
            query, page = query.limit(limit), page.limit(limit)
        with self.db.sessions() as session:
            rows = session.execute(query).all()
            variants = self._variant_facts(session, {v for r in rows for v in (r.active_variants or [r.active_variant])
                                                     if v})
            rollouts = self._rollout_of(session, [r.id for r in rows])
            models = self._models_of(session, rows, variants, page.subquery())
        out = []
        for r in rows:
            v = variants.get(r.active_variant)
            out.append({
                "device": r.id, "profile": r.profile, "online": bool(r.online), "simulated": bool(r.simulated),
                "tags": r.tags or [], "cohort": r.cohort, "active_variant": r.active_variant,
                "model": f"{v['model']} v{v['version']}" if v else None, "variant": v["label"] if v else None,
                "selected_variant": r.winner, "p50_ms": r.p50_ms, "runtime": r.runtime,
                "accuracy": v["accuracy"] if v else None, "agreement": v["agreement"] if v else None,
                "runtimes": r.runtimes or {}, "desired": f"{r.model} v{r.version}" if r.model else None,
                "generation": r.generation, "rollout": rollouts.get(r.id),
                # Numbered events stored, and those sent but never stored (gaps in the numbers).
                "events": {"received": r.received or 0, "missing": r.missing or 0},
                # The newest field telemetry interval: real requests, not benchmarks.
                "field": {"requests_per_min": r.requests_per_min, "error_rate": r.error_rate, "p99_ms": r.field_p99_ms,
                          "drift": r.drift, "at": r.field_at.isoformat()} if r.field_at else None,
                "last_seen": r.last_seen.isoformat() if r.last_seen else None,
                # One entry per model slot: what it runs, its benchmark and its newest field interval.
                "models": models.get(r.id, []),
            })
        return out

    @staticmethod
    def _models_of(session, rows: list, variants: dict[str, dict], page) -> dict[str, list[dict]]:
        """device -> its model slots (the desired ones, and any slot it still serves), each with the
        variant it runs, the selection, the benchmark p50 and the newest field interval. Three
        queries for the page, whatever its size (`page`: the page's device ids, as a subquery)."""
        s, b, f = SelectionRow.__table__, BenchmarkRow.__table__, DeviceFieldRow.__table__
        selected, p50, field = {}, {}, {}
        in_page = select(page.c.id)
        running = {v for r in rows for v in (r.active_variants or [r.active_variant]) if v}
        if rows:
            selected.update({(d, m): (v, w) for d, m, v, w in session.execute(
                select(s.c.device_id, s.c.model, s.c.version, s.c.winner).where(s.c.device_id.in_(in_page)))})
            p50.update({(d, v): ms for d, v, ms in session.execute(
                select(b.c.device_id, b.c.variant_id, b.c.p50_ms).where(b.c.device_id.in_(in_page),
                                                                        b.c.variant_id.in_(sorted(running)),
                                                                        b.c.settings_key == "default"))})
            for row in session.execute(select(f).where(f.c.device_id.in_(in_page))):
                field[(row.device_id, row.variant_id)] = {
                    "requests": row.requests or 0, "errors": row.errors or 0, "p50_ms": row.p50_ms,
                    "p99_ms": row.p99_ms, "requests_per_min": row.requests_per_min, "error_rate": row.error_rate,
                    "drift": row.drift, "at": row.end.isoformat()}
        out: dict[str, list[dict]] = {}
        for r in rows:
            active = {variants[v]["model"]: v for v in (r.active_variants or [r.active_variant]) if v in variants}
            desired = [(x["model"], x["version"]) for x in r.slots] if r.slots is not None else \
                ([(r.model, r.version)] if r.model else [])
            run_with = {x["model"]: x.get("settings") for x in r.slots or []}
            names = dict(desired)
            for m in active:
                names.setdefault(m, variants[active[m]]["version"])
            entries = []
            for model in sorted(names):
                variant = active.get(model)
                facts = variants.get(variant) if variant else None
                version, winner = selected.get((r.id, model), (None, None))
                entries.append({"model": model, "desired_version": names[model] if model in dict(desired) else None,
                                "version": facts["version"] if facts else None, "variant": variant,
                                "label": facts["label"] if facts else None, "selected_variant": winner,
                                "accuracy": facts["accuracy"] if facts else None,
                                # The runtime settings the hub chose for it (None: the runtime's defaults).
                                "settings": run_with.get(model),
                                "p50_ms": p50.get((r.id, variant)) if variant else None,
                                "field": field.get((r.id, variant)) if variant else None})
            out[r.id] = entries
        return out

    @staticmethod
    def _variant_facts(session, ids: set[str]) -> dict[str, dict]:
        v, mv, m = VariantRow.__table__, ModelVersionRow.__table__, ModelRow.__table__
        found = {}
        for chunk in chunks(sorted(ids)):
            for row in session.execute(select(v.c.id, v.c.label, v.c.metrics, mv.c.version, m.c.name)
                                       .join(mv, mv.c.id == v.c.model_version_id).join(m, m.c.id == mv.c.model_id)
                                       .where(v.c.id.in_(chunk))):
                metrics = row.metrics or {}
                found[row.id] = {"label": row.label, "model": row.name, "version": row.version,
                                 "accuracy": metrics.get("accuracy"), "agreement": metrics.get("agreement")}
        return found

    @staticmethod
    def _rollout_of(session, device_ids: list[str]) -> dict[str, dict]:
        t, r = RolloutDeviceRow.__table__, RolloutRow.__table__
        found = {}
        for chunk in chunks(device_ids):
            for row in session.execute(select(t.c.device_id, t.c.rollout_id, t.c.stage, t.c.status, r.c.stage)
                                       .join(r, r.c.id == t.c.rollout_id)
                                       .where(t.c.device_id.in_(chunk), r.c.status.in_(ACTIVE))
                                       .order_by(t.c.rollout_id)):
                found[row[0]] = {"id": row[1], "stage": row[2], "status": row[3], "targeted": row[2] <= row[4]}
        return found

    def status_summary(self, where: StatusFilter | None = None) -> dict[str, Any]:
        """Counts for the whole filtered fleet: total, online, simulated, settled, per profile, and
        per active rollout (stage x outcome)."""
        where = where or StatusFilter()
        d, s = DeviceRow.__table__, SelectionRow.__table__
        # Settled: the device runs what the hub selected for it (a slot's selection names its winner).
        settled = case((and_(d.c.active_variant.is_not(None), exists().where(
            s.c.device_id == d.c.id, s.c.winner == d.c.active_variant)), 1), else_=0)
        query = where.apply(select(d.c.profile, func.count(), func.sum(case((d.c.online, 1), else_=0)),
                                   func.sum(case((d.c.simulated, 1), else_=0)), func.sum(settled))
                            .select_from(d)).group_by(d.c.profile)
        summary: dict[str, Any] = {"devices": 0, "online": 0, "simulated": 0, "settled": 0, "profiles": {}}
        with self.db.sessions() as session:
            for profile, n, online, simulated, done in session.execute(query):
                summary["profiles"][profile] = {"devices": n, "online": int(online or 0), "settled": int(done or 0)}
                summary["devices"] += n
                summary["online"] += int(online or 0)
                summary["simulated"] += int(simulated or 0)
                summary["settled"] += int(done or 0)
            active = session.execute(select(RolloutRow.id, RolloutRow.model, RolloutRow.version, RolloutRow.selector,
                                            RolloutRow.status, RolloutRow.stage)
                                     .where(RolloutRow.status.in_(ACTIVE)).order_by(RolloutRow.id)).all()
            e = EventStreamRow.__table__
            lost = where.apply(select(func.coalesce(func.sum(e.c.missing), 0), func.count())
                               .select_from(d).join(e, e.c.device_id == d.c.id).where(e.c.missing > 0))
            missing, devices = session.execute(lost).one()
            f = DeviceFieldRow.__table__
            drifting = session.scalar(where.apply(select(func.count(func.distinct(d.c.id))).select_from(d)
                                                  .join(f, f.c.device_id == d.c.id).where(f.c.drift > DRIFT_ALERT_PSI)))
        summary["events_missing"] = {"events": int(missing), "devices": int(devices)}
        # Devices whose served inputs no longer look like the eval set (input PSI over DRIFT_ALERT_PSI).
        summary["drift"] = {"devices": int(drifting or 0), "threshold": DRIFT_ALERT_PSI}
        summary["rollouts"] = []
        for rid, model, version, selector, status, stage in active:
            if where.rollout is not None and rid != where.rollout:
                continue
            summary["rollouts"].append({"id": rid, "model": model, "version": version, "group": selector,
                                        "status": status, "stage": stage, "counts": self.rollouts.rollout_counts(rid)})
        return summary

    def variant_benchmarks(self, variant_ids: list[str]) -> list:
        """(variant_id, ok, p50_ms, runtime, profile) of every device's newest result for these
        variants (the index on device_benchmarks.variant_id)."""
        b, d = BenchmarkRow.__table__, DeviceRow.__table__
        with self.db.sessions() as session:
            return [row for chunk in chunks(variant_ids) for row in session.execute(
                select(b.c.variant_id, b.c.ok, b.c.p50_ms, b.c.runtime, d.c.profile)
                .join(d, d.c.id == b.c.device_id).where(b.c.variant_id.in_(chunk),
                                                        b.c.settings_key == "default"))]

    def selection_counts(self, model: str, version: int) -> list[tuple[str, str, int]]:
        """(profile, winner, devices) over the devices whose selection for model v version picked one."""
        s, d = SelectionRow.__table__, DeviceRow.__table__
        with self.db.sessions() as session:
            return [tuple(r) for r in session.execute(
                select(d.c.profile, s.c.winner, func.count()).join(d, d.c.id == s.c.device_id)
                .where(s.c.model == model, s.c.version == version, s.c.winner.is_not(None))
                .group_by(d.c.profile, s.c.winner))]

    def desired_counts(self, model: str) -> dict[int, int]:
        """version -> devices whose desired state targets that version of `model`."""
        q = DesiredRow.__table__
        with self.db.sessions() as session:
            return {v: n for v, n in session.execute(select(q.c.version, func.count()).where(q.c.model == model)
                                                     .group_by(q.c.version))}

    def device_benchmarks(self, device_id: str) -> list[dict[str, Any]]:
        """The device's newest result for every variant it measured (the primary key's prefix)."""
        b = BenchmarkRow.__table__
        with self.db.sessions() as session:
            rows = session.execute(select(b.c.variant_id, b.c.ok, b.c.p50_ms, b.c.p99_ms, b.c.agreement,
                                          b.c.peak_rss_mb, b.c.error, b.c.runtime, b.c.settings_key, b.c.at)
                                   .where(b.c.device_id == device_id).order_by(b.c.at.desc())).all()
        return [{"variant_id": r.variant_id, "ok": r.ok, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                 "agreement": r.agreement, "peak_rss_mb": r.peak_rss_mb, "error": r.error, "runtime": r.runtime,
                 "settings": r.settings_key, "at": r.at.isoformat()} for r in rows]

    def device_activations(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's newest activation results and errors, newest first (events by device)."""
        with self.db.sessions() as session:
            rows = session.execute(select(EventRow.body, EventRow.received_at)
                                   .where(EventRow.device_id == device_id, EventRow.kind.in_(("activation", "error")))
                                   .order_by(EventRow.received_at.desc()).limit(limit)).all()
        return [{**body, "received_at": at.isoformat()} for body, at in rows]
