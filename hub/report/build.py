"""`edgehub report MODEL`: an HTML page and PNG charts of what the fleet measured for a model.

Per profile: every variant's latency on the devices (median p50 over the devices that reported
it) against its accuracy on the eval set, with the Pareto front (no variant both faster and more
accurate) and the variant the devices selected most; the size of every variant; the progress
of each rollout of the model over time. Numbers from simulated devices are labelled as such.
The data gathering and the Pareto front are pure functions of the store's rows; the charts are
hub/report/charts.py and the page hub/report/template.py.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from edgehub.hub.fleet.records import FleetError
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.rollout.machine import RolloutState
from edgehub.zoo.records import utcnow
from edgehub.zoo.registry import Registry


class ReportError(FleetError):
    """A report that cannot be made (unknown model or version)."""


class VariantPoint(BaseModel):
    variant_id: str
    label: str
    precision: str
    format: str
    size_bytes: int
    accuracy: float | None = None  # on the eval set (agreement with fp32 when it has no labels)
    accuracy_kind: str = "accuracy"
    p50_ms: float | None = None  # median over the profile's devices
    devices: int = 0  # devices that reported it ok
    failed: int = 0  # devices where it failed
    selected_by: int = 0  # devices whose selection picked it
    pareto: bool = False
    simulated: bool = False


class ProfileSection(BaseModel):
    profile: str
    variants: list[VariantPoint]
    selected: str | None = None  # the variant most devices of the profile selected
    simulated: bool = False
    chart: str | None = None


class RolloutSection(BaseModel):
    id: int
    group: str
    status: str
    stage: int
    stages: int
    reason: str
    members: int
    timeline: list[tuple[datetime, str]] = Field(default_factory=list)  # (when, activated|failed)
    transitions: list[tuple[datetime, str, int]] = Field(default_factory=list)  # (when, status, stage)
    chart: str | None = None


class ReportData(BaseModel):
    model: str
    version: int
    profiles: list[ProfileSection]
    rollouts: list[RolloutSection]
    sizes_chart: str | None = None
    simulated: bool = False
    generated_at: datetime


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Ids of the points (id, latency, accuracy) that no other point beats: at most as slow and
    at least as accurate, and strictly better in one of the two."""
    front = set()
    for pid, lat, acc in points:
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for _, l2, a2 in points)
        if not dominated:
            front.add(pid)
    return front


def _profile_section(profile: str, variants, rows: list, selections: dict[str, int]) -> ProfileSection:
    points = []
    for v in variants:
        mine = [r for r in rows if r.variant_id == v.id]
        good = [r.p50_ms for r in mine if r.ok and r.p50_ms is not None]
        accuracy = v.metrics.get("accuracy")
        kind = "accuracy"
        if accuracy is None:
            accuracy, kind = v.metrics.get("agreement"), "agreement with fp32"
        points.append(VariantPoint(
            variant_id=v.id, label=v.label, precision=v.precision, format=v.format, size_bytes=v.size_bytes,
            accuracy=accuracy, accuracy_kind=kind, p50_ms=statistics.median(good) if good else None,
            devices=len(good), failed=sum(1 for r in mine if not r.ok), selected_by=selections.get(v.id, 0),
            simulated=any(r.runtime == "simulated" for r in mine)))
    front = pareto_front([(p.variant_id, p.p50_ms, p.accuracy) for p in points
                          if p.p50_ms is not None and p.accuracy is not None])
    for p in points:
        p.pareto = p.variant_id in front
    chosen = max((p for p in points if p.selected_by), key=lambda p: p.selected_by, default=None)
    return ProfileSection(profile=profile, variants=points, selected=chosen.variant_id if chosen else None,
                          simulated=any(p.simulated for p in points))


def gather(fleet: FleetStore, registry: Registry, model: str, version: int | None = None) -> ReportData:
    """Everything the report shows, from a handful of indexed queries."""
    record = registry.get_version(model, version) if version else registry.latest_version(model)
    if record is None:
        what = f"{model} v{version}" if version else model
        raise ReportError(f"no model {what} in the registry; see `edgehub zoo list`")
    variants = registry.variants(model, record.version)
    ids = [v.id for v in variants]
    rows = fleet.variant_benchmarks(ids)
    picked = fleet.selection_counts(model, record.version)
    profiles = sorted({p for v in variants for p in v.profiles})
    sections = []
    for profile in profiles:
        selections = {winner: n for p, winner, n in picked if p == profile}
        sections.append(_profile_section(profile, [v for v in variants if profile in v.profiles],
                                         [r for r in rows if r.profile == profile], selections))
    rollouts = []
    for r in fleet.rollouts(model=model):
        if r.version != record.version:
            continue
        state = RolloutState.model_validate(r.state)
        rollouts.append(RolloutSection(
            id=r.id, group=r.selector, status=r.status, stage=r.stage, stages=state.spec.stage_count,
            reason=state.reason, members=sum(sum(c.values()) for c in fleet.rollout_counts(r.id).values()),
            timeline=fleet.rollout_timeline(r.id),
            transitions=[(t.at, t.status, t.stage) for t in state.history]))
    return ReportData(model=model, version=record.version, profiles=sections, rollouts=rollouts,
                      simulated=any(p.simulated for p in sections), generated_at=utcnow())


def write_report(fleet: FleetStore, registry: Registry, model: str, out: Path, version: int | None = None) -> Path:
    """Write <out>/index.html and its PNG charts; returns the page's path."""
    return write_report_of(gather(fleet, registry, model, version), out)


def write_report_of(data: ReportData, out: Path) -> Path:
    """The page and charts of gathered data (a remote hub's report data too)."""
    from edgehub.hub.report.charts import latency_accuracy_chart, rollout_chart, sizes_chart
    from edgehub.hub.report.template import render

    out.mkdir(parents=True, exist_ok=True)
    for section in data.profiles:
        section.chart = latency_accuracy_chart(section, out / f"latency-accuracy-{section.profile}.png").name
    data.sizes_chart = sizes_chart(data, out / "sizes.png").name
    for r in data.rollouts:
        r.chart = rollout_chart(r, out / f"rollout-{r.id}.png").name
    page = out / "index.html"
    page.write_text(render(data), encoding="utf-8")
    return page
