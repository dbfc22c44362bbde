"""What a device's desired state should be. Pure functions; the fleet service does the I/O.

Generations only move forward. A new target (model version) for the device gives a new
candidate list; a selection gives a new variant to activate. Anything else leaves the desired
state as it is, so repeated reconciles publish nothing.

`plan_next` works on a stored summary (no candidate bodies), so the hub can plan for a batch
of devices without parsing their desired states; `settle` takes both steps at once when the
winner of the new target is already known (a rollback to a version the device has measured, a
cohort winner the device has checked), so the device gets one desired state, not two.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from edgehub.hub.fleet.records import DesiredSummary
from edgehub.protocol.messages import BenchmarkSettings, Candidate, DesiredState, now_utc
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
