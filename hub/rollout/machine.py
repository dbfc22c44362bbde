"""Staged rollouts as a pure state machine: no I/O, no clock (callers pass `now`).

A rollout moves one model version onto a group in stages: the canary (a share or a count of
the group), optional further stages, then everyone. The hub counts, per stage, how many of the
targeted devices activated the new version and passed the agent's health check, and how many
failed; `decide` turns those counts into the next state:

- failed / targeted > error_threshold, or failed > error_count: the stage failed. With
  on_error="rollback" (the default) halt and roll back (status `rolled_back`), even when paused;
  with on_error="pause", pause for the operator (who resumes or aborts);
- activated / targeted >= success_threshold (and the stage soaked `min_soak_s`): the next stage,
  or `completed` after the last one; with on_success="approve", wait (status `waiting`) for the
  operator's `approve` before each next stage (hawkBit's per-group "pause for approval");
- otherwise: unchanged.

`pause`, `resume`, `approve` and `abort` are the operator's transitions. The state is a pydantic model the
store keeps as JSON, so a restarted hub carries on from where it was. `alias_effects` says how
the MLflow-style aliases of the group move on entering a status: `canary` points at the version
while it rolls out, `production` moves to it on completion, a rollback only drops `canary`.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgehub.hub.fleet.records import ACTIVE_ROLLOUT, FleetError, MemberStatus, RolloutStatus

Status = RolloutStatus
ACTIVE = ACTIVE_ROLLOUT
DeviceOutcome = MemberStatus


class RolloutError(FleetError, ValueError):
    """An operator action that does not apply to the rollout's state (one line)."""


class StageSize(BaseModel):
    """A cumulative stage size: a share of the group or a number of devices."""

    model_config = ConfigDict(frozen=True)

    fraction: float | None = Field(None, gt=0, le=1)
    count: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> StageSize:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give a fraction or a count")
        return self

    def devices(self, total: int) -> int:
        """How many of `total` devices this stage covers (at least one when any exist)."""
        if total == 0:
            return 0
        wanted = self.count if self.count is not None else math.ceil(self.fraction * total - 1e-9)
        return max(1, min(total, wanted))

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction is not None else str(self.count)


def parse_stage_size(text: str) -> StageSize:
    """`5%` -> 5% of the group, `0.05` -> 5%, `20` -> 20 devices."""
    t = text.strip()
    try:
        if t.endswith("%"):
            return StageSize(fraction=float(t[:-1]) / 100)
        if re.fullmatch(r"\d+", t):
            return StageSize(count=int(t))
        return StageSize(fraction=float(t))
    except ValueError:
        raise RolloutError(f"invalid stage size {text!r}: use a share (5%, 0.05) or a device count (20)") from None


def parse_error_threshold(text: str) -> tuple[float, int | None]:
    """`10%` / `0.1` -> (share 0.1, no count); `3` -> (no share bound, at most 3 failed devices)."""
    t = text.strip()
    if re.fullmatch(r"\d+", t):
        return 1.0, int(t)
    return parse_fraction(t, "error threshold"), None


def parse_fraction(text: str | float, what: str) -> float:
    """`95%` or `0.95` -> 0.95, within [0, 1]."""
    try:
        value = float(text[:-1]) / 100 if isinstance(text, str) and text.strip().endswith("%") else float(text)
    except ValueError:
        raise RolloutError(f"invalid {what} {text!r}: use a share such as 95% or 0.95") from None
    if not 0 <= value <= 1:
        raise RolloutError(f"{what} {text!r} is outside 0..100%")
    return value


class FieldGate(BaseModel):
    """A stage's success also needs the new version to behave in the field (telemetry of real requests
    on the stage's devices since it started): at most this error rate, field p99 at most this many
    times the previous variant's on the same devices, outputs shifted at most this much (PSI of the
    output histograms, new vs previous). Judged once `min_requests` real requests were seen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_p99_ratio: float | None = Field(None, gt=0)
    max_output_shift: float | None = Field(None, ge=0)
    min_requests: int = Field(100, ge=1)


class FieldCheck(BaseModel):
    """What the stage's devices measured in the field (hub/rollout/ops.py gathers it)."""

    model_config = ConfigDict(frozen=True)

    requests: int = 0
    devices: int = 0
    error_rate: float = 0.0
    p99_ms: float | None = None
    previous_p99_ms: float | None = None
    output_shift: float | None = None

    @property
    def p99_ratio(self) -> float | None:
        return self.p99_ms / self.previous_p99_ms if self.p99_ms and self.previous_p99_ms else None


def field_failure(gate: FieldGate, check: FieldCheck) -> str | None:
    """Why the field figures fail the gate (None: they pass, or there is not enough evidence yet)."""
    if check.requests < gate.min_requests:
        return None
    if gate.max_error_rate is not None and check.error_rate > gate.max_error_rate:
        return f"field error rate {check.error_rate:.1%} > {gate.max_error_rate:.1%} ({check.requests} requests)"
    ratio = check.p99_ratio
    if gate.max_p99_ratio is not None and ratio is not None and ratio > gate.max_p99_ratio:
        return (f"field p99 {check.p99_ms:.2f} ms is {ratio:.2f}x the previous variant's {check.previous_p99_ms:.2f} ms "
                f"(> {gate.max_p99_ratio:.2f}x)")
    if gate.max_output_shift is not None and check.output_shift is not None and check.output_shift > gate.max_output_shift:
        return f"outputs shifted from the previous variant's (PSI {check.output_shift:.3f} > {gate.max_output_shift:.3f})"
    return None


class RolloutSpec(BaseModel):
    """What the operator asked for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    version: int = Field(ge=1)
    selector: str  # hub/fleet/groups.py: a tag or profile:NAME
    stages: list[StageSize] = Field(default_factory=lambda: [StageSize(fraction=0.05)], max_length=10)
    success_threshold: float = Field(0.95, ge=0, le=1)
    error_threshold: float = Field(0.10, ge=0, le=1)
    error_count: int | None = Field(None, ge=0)  # an absolute bound on failed devices, besides the share
    min_soak_s: float = Field(0.0, ge=0)
    on_success: Literal["continue", "approve"] = "continue"
    on_error: Literal["rollback", "pause"] = "rollback"
    field: FieldGate | None = None  # success also needs good field telemetry

    @property
    def stage_count(self) -> int:
        """The explicit stages plus the final one (everyone)."""
        return len(self.stages) + 1


class StageCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    total: int = Field(0, ge=0)
    activated: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)

    @property
    def pending(self) -> int:
        return self.total - self.activated - self.failed

    def __add__(self, other: StageCounts) -> StageCounts:
        return StageCounts(total=self.total + other.total, activated=self.activated + other.activated,
                           failed=self.failed + other.failed)


class Transition(BaseModel):
    at: datetime
    status: Status
    stage: int
    reason: str
    counts: StageCounts | None = None
    field: FieldCheck | None = None  # the field figures the decision saw


class RolloutState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: RolloutSpec
    status: Status = "running"
    stage: int = 0
    stage_started_at: datetime
    reason: str = ""
    history: list[Transition] = Field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def targets(self, member_stage: int) -> bool:
        """Whether a member in `member_stage` should run the new version now."""
        return self.active and member_stage <= self.stage


def _step(state: RolloutState, now: datetime, status: Status, stage: int, reason: str,
          counts: StageCounts | None = None, field: FieldCheck | None = None) -> RolloutState:
    history = [*state.history, Transition(at=now, status=status, stage=stage, reason=reason, counts=counts,
                                          field=field)]
    started = now if stage != state.stage else state.stage_started_at  # soak time counts per stage
    return state.model_copy(update={"status": status, "stage": stage, "reason": reason, "history": history,
                                    "stage_started_at": started})


def start(spec: RolloutSpec, now: datetime) -> RolloutState:
    state = RolloutState(spec=spec, stage_started_at=now)
    return _step(state, now, "running", 0, f"started: canary {spec.stages[0] if spec.stages else 'none'}")


def stage_rank(device_id: str, seed: str) -> str:
    """A device's stable place in the rollout order (the same on every hub, every restart)."""
    return hashlib.sha256(f"{seed}:{device_id}".encode()).hexdigest()


def assign_stages(members: list[tuple[str, bool]], spec: RolloutSpec, seed: str) -> dict[str, int]:
    """Stage of each (device id, online) member: online devices first, then a stable hash order,
    so the canary is made of devices that can answer, and no one picks them by hand."""
    ordered = sorted(members, key=lambda m: (not m[1], stage_rank(m[0], seed)))
    bounds = [size.devices(len(ordered)) for size in spec.stages]
    stages: dict[str, int] = {}
    for position, (device_id, _) in enumerate(ordered):
        stage = next((i for i, bound in enumerate(bounds) if position < bound), len(bounds))
        stages[device_id] = stage
    return stages


def late_member_stage(spec: RolloutSpec) -> int:
    """A device that joins the group mid-rollout goes to the last stage: it gets the new version
    once the rollout reaches everyone, the version the rest of the group runs until then."""
    return spec.stage_count - 1


def targeted(state: RolloutState, counts: dict[int, StageCounts]) -> StageCounts:
    """Counts over the stages that run the new version now."""
    total = StageCounts()
    for stage in range(state.stage + 1):
        total = total + counts.get(stage, StageCounts())
    return total


def failure(spec: RolloutSpec, seen: StageCounts) -> str | None:
    """Why the targeted devices' failures are past the thresholds, or None."""
    if not seen.total:
        return None
    if seen.failed / seen.total > spec.error_threshold:
        return (f"{seen.failed} of {seen.total} targeted devices failed "
                f"({seen.failed / seen.total:.0%} > error threshold {spec.error_threshold:.0%})")
    if spec.error_count is not None and seen.failed > spec.error_count:
        return f"{seen.failed} of {seen.total} targeted devices failed (> error threshold of {spec.error_count} devices)"
    return None


def decide(state: RolloutState, counts: dict[int, StageCounts], now: datetime,
           field: FieldCheck | None = None) -> RolloutState:
    """The next state given per-stage counts (and, with a field gate, the stage's field figures);
    `state` itself when nothing changes."""
    if not state.active:
        return state
    spec, seen = state.spec, targeted(state, counts)
    failed = failure(spec, seen)
    if failed is None and spec.field is not None and field is not None:
        failed = field_failure(spec.field, field)
    if failed is not None:
        if spec.on_error == "rollback":
            return _step(state, now, "rolled_back", state.stage, f"halted and rolled back: {failed}", seen, field)
        if state.status != "paused":
            return _step(state, now, "paused", state.stage,
                         f"halted for the operator (on error: pause): {failed}; resume or abort", seen, field)
        return state
    if state.status != "running":
        return state
    share = seen.activated / seen.total if seen.total else 1.0
    soaked = (now - state.stage_started_at).total_seconds() >= spec.min_soak_s
    if share + 1e-12 < spec.success_threshold or not soaked:
        return state
    done = f"{seen.activated} of {seen.total} activated and healthy ({share:.0%} >= {spec.success_threshold:.0%})"
    if spec.field is not None and seen.total:
        if field is None or field.requests < spec.field.min_requests:
            return state  # installs passed; the field has not said enough yet
        done += f"; field: {field.requests} requests, error rate {field.error_rate:.1%}" + (
            f", p99 {field.p99_ratio:.2f}x the previous" if field.p99_ratio is not None else "")
    if state.stage + 1 >= spec.stage_count:
        return _step(state, now, "completed", state.stage, f"completed: {done}", seen, field)
    if spec.on_success == "approve":
        return _step(state, now, "waiting", state.stage,
                     f"stage {state.stage + 1} succeeded: {done}; waiting for approval", seen, field)
    return _step(state, now, "running", state.stage + 1, f"stage {state.stage + 1} started: {done}", seen, field)


def pause(state: RolloutState, now: datetime) -> RolloutState:
    if state.status != "running":
        raise RolloutError(f"cannot pause a rollout that is {state.status}")
    return _step(state, now, "paused", state.stage, "paused by the operator")


def resume(state: RolloutState, now: datetime) -> RolloutState:
    if state.status != "paused":
        raise RolloutError(f"cannot resume a rollout that is {state.status}")
    return _step(state, now, "running", state.stage, "resumed by the operator")


def approve(state: RolloutState, now: datetime) -> RolloutState:
    """Start the next stage of a rollout waiting for approval."""
    if state.status != "waiting":
        raise RolloutError(f"cannot approve a rollout that is {state.status}: only one waiting for approval")
    return _step(state, now, "running", state.stage + 1, f"stage {state.stage + 2} started: approved by the operator")


def abort(state: RolloutState, now: datetime, reason: str = "aborted by the operator") -> RolloutState:
    if not state.active:
        raise RolloutError(f"cannot abort a rollout that is {state.status}")
    return _step(state, now, "aborted", state.stage, f"{reason}; rolled back")


class AliasEffect(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Literal["set", "delete"]
    name: str
    model: str | None = None
    version: int | None = None


def alias_effects(before: RolloutState | None, after: RolloutState) -> list[AliasEffect]:
    """How the group's aliases move when a rollout goes from `before` to `after`."""
    if before is not None and before.status == after.status:
        return []
    spec = after.spec
    if after.status in ACTIVE and (before is None or before.status not in ACTIVE):
        return [AliasEffect(action="set", name="canary", model=spec.model, version=spec.version)]
    if after.status == "completed":
        return [AliasEffect(action="set", name="production", model=spec.model, version=spec.version),
                AliasEffect(action="delete", name="canary", model=spec.model)]
    if after.status in ("rolled_back", "aborted"):
        return [AliasEffect(action="delete", name="canary", model=spec.model)]
    return []


def member_outcome(*, activation_ok: bool | None = None, error: str | None = None, nothing_eligible: bool = False,
                   running_new_winner: bool = False) -> tuple[DeviceOutcome, str | None] | None:
    """A rollout member's outcome from what the hub learnt of it, or None while it is pending: an
    activation result of the new version (ok means activated and health-checked), no variant of the
    new version eligible on the device, or the device already running the new version's winner.
    The one place outcomes are derived (from events and from reconciling alike)."""
    if activation_ok is False:
        return "failed", f"activation failed: {error or 'unknown error'}"
    if nothing_eligible:
        return "failed", "no variant of the new version is eligible on the device"
    if activation_ok or running_new_winner:
        return "activated", None
    return None
