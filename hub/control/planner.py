"""What a device's desired state should be. Pure functions; the fleet service does the I/O.

Generations only move forward. A new target (model version) for the device gives a new
candidate list; a selection gives a new variant to activate. Anything else leaves the desired
state as it is, so repeated reconciles publish nothing.

`plan_next` works on a stored summary (no candidate bodies), so the hub can plan for a batch
of devices without parsing their desired states; `settle` takes both steps at once when the
winner of the new target is already known (a rollback to a version the device has measured, a
cohort winner the device has checked), so the device gets one desired state, not two.

A device with several models plans each slot that way (`plan_device`): one new generation when
any slot changed, a slot dropped when its model is no longer targeted. A v1 agent gets one slot.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from edgehub.hub.fleet.records import DesiredSummary, SlotSummary
from edgehub.protocol.messages import BenchmarkSettings, Candidate, DesiredState, ModelSlot, now_utc
from edgehub.protocol.runtime_settings import RuntimeSettings, TuningPlan
from edgehub.protocol.telemetry import TelemetrySettings


class DesiredPlan(BaseModel):
    """The next desired state, minus the candidates' bodies."""

    model_config = ConfigDict(frozen=True)

    generation: int
    model: str
    version: int
    candidate_ids: tuple[str, ...]
    activate: str | None
    benchmark: BenchmarkSettings

    def summary(self) -> DesiredSummary:
        return DesiredSummary(generation=self.generation, model=self.model, version=self.version,
                              candidate_ids=self.candidate_ids, activate=self.activate, benchmark=self.benchmark)


def plan_next(current: DesiredSummary | None, target: tuple[str, int] | None, candidate_ids: list[str],
              winner: str | None, settings: BenchmarkSettings) -> DesiredPlan | None:
    """One step towards the target, or None when nothing needs to change."""
    if target is None:
        return None
    model, version = target
    wanted = tuple(candidate_ids)
    generation = (current.generation + 1) if current else 1
    if current is None or (current.model, current.version) != (model, version) or \
            current.candidate_ids != wanted or current.benchmark != settings:
        # New work: benchmark these candidates. The device keeps serving what it has meanwhile.
        return DesiredPlan(generation=generation, model=model, version=version, candidate_ids=wanted,
                    activate=current.activate if current else None, benchmark=settings)
    if winner is not None and winner != current.activate and winner in wanted:
        return DesiredPlan(generation=generation, model=model, version=version, candidate_ids=wanted, activate=winner,
                    benchmark=settings)
    return None


def settle(current: DesiredSummary | None, target: tuple[str, int] | None, candidate_ids: list[str],
           winner: str | None, settings: BenchmarkSettings) -> DesiredPlan | None:
    """Like plan_next, but a new target whose winner is already known activates it at once."""
    first = plan_next(current, target, candidate_ids, winner, settings)
    if first is None:
        return None
    second = plan_next(first.summary(), target, candidate_ids, winner, settings)
    if second is None:
        return first
    return second.model_copy(update={"generation": first.generation})  # the device never saw `first`


def desired_from(device_id: str, plan: DesiredPlan, candidates: list[Candidate],
                 telemetry: TelemetrySettings | None = None) -> DesiredState:
    """The wire body of a plan; `candidates` are in the plan's order."""
    return DesiredState(device_id=device_id, generation=plan.generation, model=plan.model, version=plan.version,
                        candidates=candidates, activate=plan.activate, benchmark=plan.benchmark,
                        telemetry=telemetry, at=now_utc())


def next_desired(device_id: str, current: DesiredState | None, deployment: tuple[str, int] | None,
                 candidates: list[Candidate], winner: str | None,
                 settings: BenchmarkSettings) -> DesiredState | None:
    """The new desired state for a device, or None when nothing needs to change."""
    plan = plan_next(DesiredSummary.of(current) if current else None, deployment,
                     [c.variant_id for c in candidates], winner, settings)
    return desired_from(device_id, plan, candidates) if plan is not None else None


class SlotWant(BaseModel):
    """What reconciling decided for one model slot of a device."""

    model_config = ConfigDict(frozen=True)

    target: tuple[str, int]
    candidate_ids: tuple[str, ...]
    winner: str | None = None
    settings: RuntimeSettings | None = None  # to run the winner with (None: the runtime's defaults)
    tuning: TuningPlan | None = None  # the settings the device should measure (v2 agents)


class DevicePlan(BaseModel):
    """A device's next desired state: every slot, in order, minus the candidates' bodies."""

    model_config = ConfigDict(frozen=True)

    generation: int
    slots: tuple[SlotSummary, ...]
    benchmark: BenchmarkSettings
    protocol: int


def plan_device(current: DesiredSummary | None, wants: list[SlotWant], keep: set[str], settings: BenchmarkSettings,
                protocol: int) -> DevicePlan | None:
    """The next desired state of a device from its slots' wants, or None when nothing changes.

    `keep`: models still targeted whose slots stay as they are (no variants for the profile yet);
    a slot of any other model not in `wants` is dropped. Slots are ordered by model name. A v1
    agent (`protocol` 1) gets the first want only: it runs one model."""
    if protocol < 2:
        wants, keep = wants[:1], set()
    slots: dict[str, SlotSummary] = {}
    before = {s.model: s for s in (current.slot_summaries() if current else ())}
    for want in wants:
        model, version = want.target
        mine = current.for_slot(model) if current else None
        plan = settle(mine, want.target, list(want.candidate_ids), want.winner, settings)
        if plan is not None:
            slot = SlotSummary(model=model, version=version, candidate_ids=plan.candidate_ids, activate=plan.activate)
        elif mine is not None:
            slot = SlotSummary(model=model, version=mine.version or version, candidate_ids=mine.candidate_ids,
                               activate=mine.activate)
        else:
            continue
        # The winner's runtime settings go with it; a slot keeping its variant keeps its settings.
        old = before.get(model)
        chosen = want.settings if want.winner is not None and slot.activate == want.winner else \
            (old.settings if old is not None and old.activate == slot.activate else None)
        if protocol >= 2:
            slot = slot.model_copy(update={"settings": chosen, "tuning": want.tuning})
        slots[model] = slot
    for old in (current.slot_summaries() if current else ()):
        if old.model in keep and old.model not in slots:
            slots[old.model] = old
    if protocol < 2 and current is not None and not slots:
        return None
    ordered = tuple(slots[m] for m in sorted(slots)) if protocol >= 2 else tuple(slots.values())
    if current is not None and ordered == current.slot_summaries() and current.benchmark == settings \
            and min(protocol, 2) == current.protocol:
        return None
    if not ordered and current is None:
        return None
    return DevicePlan(generation=(current.generation + 1) if current else 1, slots=ordered, benchmark=settings,
                      protocol=min(protocol, 2))


def desired_of_plan(device_id: str, plan: DevicePlan, candidates: dict[str, list[Candidate]],
                    telemetry: dict[str, TelemetrySettings | None]) -> DesiredState:
    """The wire body of a device plan: v1 (one model, top-level fields) or v2 (slots).

    `candidates` and `telemetry` are by model, the candidates in the slot's order."""
    if plan.protocol < 2:
        slot = plan.slots[0] if plan.slots else None
        return DesiredState(device_id=device_id, generation=plan.generation, model=slot.model if slot else None,
                            version=slot.version if slot else None, candidates=candidates.get(slot.model, []) if slot
                            else [], activate=slot.activate if slot else None, benchmark=plan.benchmark,
                            telemetry=telemetry.get(slot.model) if slot else None, at=now_utc())
    return DesiredState(schema_version=2, device_id=device_id, generation=plan.generation, benchmark=plan.benchmark,
                        slots=[ModelSlot(model=s.model, version=s.version, candidates=candidates.get(s.model, []),
                                         activate=s.activate, telemetry=telemetry.get(s.model), tuning=s.tuning,
                                         activate_settings=s.settings) for s in plan.slots],
                        at=now_utc())
