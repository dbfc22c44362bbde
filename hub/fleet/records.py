"""What the fleet store accepts and returns: pydantic records; ORM rows stay inside the store."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgehub.hub.fleet.schema import DeviceRow
from edgehub.protocol.messages import BenchmarkSettings, DesiredState, DeviceState
from edgehub.protocol.runtime_settings import RuntimeSettings, TuningPlan

# The fleet's kinds and states, defined once (the change log, rollouts and their members).
ChangeKind = Literal["device", "profile", "group", "cohort", "rollout"]  # what a change-log entry names
# `waiting`: a stage succeeded and the rollout waits for an operator's `rollout approve` (on_success="approve").
RolloutStatus = Literal["running", "paused", "waiting", "completed", "rolled_back", "aborted"]
ACTIVE_ROLLOUT: tuple[RolloutStatus, ...] = ("running", "paused", "waiting")  # a rollout that still decides
MemberStatus = Literal["pending", "activated", "failed"]  # a device's outcome in a rollout


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
    simulated: bool = False
    cohort: str | None = None


class DeviceFacts(BaseModel):
    """What reconciling a device needs to know of it (no state body parsed)."""

    id: str
    profile: str
    tags: list[str] = []
    online: bool = False
    active_variant: str | None = None
    cohort: str | None = None
    protocol: int = 1  # the agent's announced protocol version: 2 takes several model slots
    cores: int | None = None
    runtimes: dict[str, str] = {}
    active_variants: list[str] = []  # every slot's

    def runs(self, variant_id: str | None) -> bool:
        return variant_id is not None and (variant_id == self.active_variant or variant_id in self.active_variants)


class SelectionRecord(BaseModel):
    device_id: str
    model: str
    version: int
    winner: str | None
    explanation: dict
    decided_at: datetime

    def digest(self) -> str:
        """What the decision says (not when it was made), as a short hash."""
        body = json.dumps([self.model, self.version, self.winner, self.explanation], sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:32]


class SlotSummary(BaseModel):
    """One model slot of a stored desired state."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    candidate_ids: tuple[str, ...] = ()
    activate: str | None = None
    settings: RuntimeSettings | None = None  # what `activate` runs with (None: the runtime's defaults)
    tuning: TuningPlan | None = None


class DesiredSummary(BaseModel):
    """A stored desired state without its candidates' bodies: what planning compares against.

    The top-level model fields are the first slot's (a v1 body has only those); `slots` has every
    slot; `protocol` is the layout the body was sent in (1: one model, 2: slots)."""

    model_config = ConfigDict(frozen=True)

    generation: int
    model: str | None = None
    version: int | None = None
    candidate_ids: tuple[str, ...] = ()
    activate: str | None = None
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    slots: tuple[SlotSummary, ...] = ()
    protocol: int = 1

    def slot_summaries(self) -> tuple[SlotSummary, ...]:
        if self.slots:
            return self.slots
        if self.model is None:
            return ()
        return (SlotSummary(model=self.model, version=self.version or 0, candidate_ids=self.candidate_ids,
                            activate=self.activate),)

    def for_slot(self, model: str) -> DesiredSummary | None:
        """This summary as a one-model one, for the slot of `model` (None: no such slot)."""
        slot = next((s for s in self.slot_summaries() if s.model == model), None)
        if slot is None:
            return None
        return DesiredSummary(generation=self.generation, model=slot.model, version=slot.version,
                              candidate_ids=slot.candidate_ids, activate=slot.activate, benchmark=self.benchmark)

    @classmethod
    def of(cls, desired: DesiredState) -> DesiredSummary:
        slots = tuple(SlotSummary(model=s.model, version=s.version, candidate_ids=tuple(c.variant_id for c in s.candidates),
                                  activate=s.activate, settings=s.activate_settings, tuning=s.tuning)
                      for s in desired.model_slots())
        first = slots[0] if slots else None
        return cls(generation=desired.generation, model=first.model if first else None,
                   version=first.version if first else None, candidate_ids=first.candidate_ids if first else (),
                   activate=first.activate if first else None, benchmark=desired.benchmark,
                   slots=slots if desired.slots is not None else (), protocol=2 if desired.slots is not None else 1)


class EnrollRequest(BaseModel):
    """One device of a bulk enrolment (`edgehub fleet simulate`)."""

    id: str
    profile: str
    password_hash: str
    tags: list[str] = []


class AliasRecord(BaseModel):
    scope: str  # "profile:<name>" or "group:<tag>"
    name: str  # "production", "canary", ...
    model: str
    version: int
    updated_at: datetime


class RolloutRecord(BaseModel):
    id: int
    model: str
    version: int
    selector: str
    status: str
    stage: int
    state: dict  # hub/rollout/machine.py RolloutState as JSON
    created_at: datetime
    updated_at: datetime


class RolloutOutcome(BaseModel):
    """A targeted device's result in a rollout (written by the hub worker that saw it)."""

    rollout_id: int
    device_id: str
    status: str  # activated | failed
    variant_id: str | None = None
    detail: str | None = None


class CohortDecisionRecord(BaseModel):
    cohort: str
    model: str
    version: int
    winner: str | None
    reports_used: int
    explanation: dict
    decided_at: datetime


class ChangeRecord(BaseModel):
    id: int
    kind: str  # profile | group | device | rollout | cohort
    key: str


def device_record(row: DeviceRow | Any) -> DeviceRecord:
    return DeviceRecord(
        id=row.id, profile=row.profile, tags=row.tags or [], enrolled_at=row.enrolled_at, online=row.online,
        last_seen=row.last_seen, state=DeviceState.model_validate(row.state) if row.state else None,
        active_variant=row.active_variant, simulated=bool(row.simulated), cohort=row.cohort,
    )
