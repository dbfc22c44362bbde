"""Rollouts against the store: start (choose the members and their stages), the operator's
pause / resume / abort, and the hub's periodic step. The decisions themselves are hub/rollout/machine.py."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel

from edgehub.hub.fleet.groups import parse_selector
from edgehub.hub.fleet.records import RolloutRecord
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.rollout import machine as rollout
from edgehub.hub.rollout.machine import FieldCheck, RolloutError, RolloutSpec, RolloutState, StageCounts
from edgehub.protocol.telemetry import output_shift
from edgehub.zoo.records import utcnow
from edgehub.zoo.registry import Registry


class Started(BaseModel):
    id: int
    members: int
    per_stage: dict[int, int]
    not_applicable: int  # group members whose profile has no variant of the version


def counts_of(fleet: FleetStore, rollout_id: int) -> dict[int, StageCounts]:
    return {stage: StageCounts(total=sum(by.values()), activated=by.get("activated", 0), failed=by.get("failed", 0))
            for stage, by in fleet.rollout_counts(rollout_id).items()}


def start_rollout(fleet: FleetStore, registry: Registry, spec: RolloutSpec, now: datetime | None = None) -> Started:
    """Create a rollout of spec.model v spec.version on its group: members ordered (online first,
    then a stable hash) into stages; the group's `canary` alias points at the version."""
    now = now or utcnow()
    selector = parse_selector(spec.selector)
    if registry.get_version(spec.model, spec.version) is None:
        raise RolloutError(f"no model {spec.model} v{spec.version} in the registry; see `edgehub zoo list`")
    ids = fleet.device_ids(profile=selector.name) if selector.kind == "profile" else fleet.device_ids(tag=selector.name)
    facts = fleet.device_facts(ids)
    has_variants: dict[str, bool] = {}
    members = []
    for d in facts.values():
        if d.profile not in has_variants:
            has_variants[d.profile] = bool(registry.variants_for_profile(spec.model, spec.version, d.profile))
        if has_variants[d.profile]:
            members.append((d.id, d.online))
    if not members:
        raise RolloutError(f"group {selector} has no device whose profile has variants of {spec.model} v{spec.version}"
                           f" ({len(facts)} device(s) in the group)")
    stages = rollout.assign_stages(members, spec, seed=f"{spec.model}:{spec.version}:{selector}")
    state = rollout.start(spec.model_copy(update={"selector": str(selector)}), now)
    effects = [e.model_dump() for e in rollout.alias_effects(None, state)]
    rollout_id = fleet.create_rollout(model=spec.model, version=spec.version, selector=str(selector),
                                      scope=selector.scope, state=state.model_dump(mode="json"), members=stages,
                                      alias_effects=effects)
    per_stage: dict[int, int] = {}
    for stage in stages.values():
        per_stage[stage] = per_stage.get(stage, 0) + 1
    return Started(id=rollout_id, members=len(stages), per_stage=per_stage, not_applicable=len(facts) - len(members))


def _save(fleet: FleetStore, record: RolloutRecord, before: RolloutState, after: RolloutState) -> bool:
    effects = [e.model_dump() for e in rollout.alias_effects(before, after)]
    advanced = after.status == "running" and after.stage != before.stage
    return fleet.save_rollout(record.id, expected=(record.status, record.stage), state=after.model_dump(mode="json"),
                              scope=parse_selector(record.selector).scope, alias_effects=effects,
                              only_stage=after.stage if advanced else None)


def find(fleet: FleetStore, rollout_id: int | None) -> RolloutRecord:
    """A rollout by id, or the newest one."""
    if rollout_id is None:
        found = fleet.rollouts()
        if not found:
            raise RolloutError("no rollouts yet: `edgehub rollout start MODEL:VERSION --group G`")
        return found[-1]
    record = fleet.get_rollout(rollout_id)
    if record is None:
        raise RolloutError(f"no rollout #{rollout_id}; see `edgehub rollout list`")
    return record


def operate(fleet: FleetStore, rollout_id: int | None, action: str, now: datetime | None = None) -> RolloutState:
    """The operator's pause / resume / approve / abort."""
    record = find(fleet, rollout_id)
    before = RolloutState.model_validate(record.state)
    transitions = {"pause": rollout.pause, "resume": rollout.resume, "approve": rollout.approve, "abort": rollout.abort}
    if action not in transitions:
        raise RolloutError(f"unknown rollout action {action!r}: one of {', '.join(transitions)}")
    after = transitions[action](before, now or utcnow())
    if not _save(fleet, record, before, after):
        raise RolloutError(f"rollout #{record.id} changed meanwhile; look at `edgehub rollout status {record.id}` "
                           "and try again")
    return after


BASELINE = timedelta(hours=24)  # the previous variant's field figures: from this long before the rollout


def field_check(fleet: FleetStore, registry: Registry, record: RolloutRecord, state: RolloutState) -> FieldCheck:
    """The field figures of a rollout's targeted devices: the new version's telemetry since the stage
    started, against the same devices' telemetry of other variants before the rollout began."""
    devices = fleet.rollout_member_ids(record.id, range(state.stage + 1))
    new_ids = [v.id for v in registry.variants(state.spec.model, state.spec.version)]
    new, reporting = fleet.field_window(devices, new_ids, since=state.stage_started_at)
    before, _ = fleet.field_window_excluding(devices, new_ids, since=record.created_at - BASELINE,
                                             until=record.created_at)
    return FieldCheck(requests=new.requests, devices=reporting,
                      error_rate=new.error_count / max(1, new.requests + new.error_count),
                      p99_ms=new.latency_ms(0.99), previous_p99_ms=before.latency_ms(0.99),
                      output_shift=output_shift(before, new))


def step_rollouts(fleet: FleetStore, now: datetime | None = None,
                  registry: Registry | None = None) -> list[tuple[int, RolloutState]]:
    """Advance, complete or roll back every active rollout as its counts (and, for a rollout with a
    field gate, its field telemetry) say; the hub's leader calls this every tick. Returns the ones
    that moved."""
    now = now or utcnow()
    moved = []
    for record in fleet.rollouts(active_only=True):
        before = RolloutState.model_validate(record.state)
        field = field_check(fleet, registry, record, before) if before.spec.field and registry else None
        after = rollout.decide(before, counts_of(fleet, record.id), now, field)
        if after is not before and _save(fleet, record, before, after):
            moved.append((record.id, after))
    return moved
