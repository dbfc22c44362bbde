"""MQTT bodies of the wire protocol (schema versions 1 and 2).

Version 2 adds model slots: a desired state carries several models, each with its own candidates
and variant to activate, and the agent's state and events name their slot. An agent announces
the version it speaks in its DeviceState's `schema_version`; the hub sends a v1 agent (or one it
has not heard from) a v1 desired state with one model, so an agent upgrade never breaks a device.
A v2 agent also accepts a v1 desired state (one slot, named by its model).

Topic root: edgehub/v1/<fleet>/ (the topic layout did not change). Every body is JSON validated
by these models; protocol/wire.py turns bytes into them and back (`parse_body`, `encode`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from edgehub.protocol.base import ID_PATTERN
from edgehub.protocol.manifest import SCHEMA_VERSION, SignedManifest
from edgehub.protocol.runtime_settings import Coverage, RuntimeSettings, TuningPlan
from edgehub.protocol.telemetry import FieldStats, TelemetrySettings


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


PROTOCOL_VERSION = 2  # what this code speaks; bodies of version 1 are read too
MAX_SLOTS = 8  # models on one device


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1, 2] = SCHEMA_VERSION


DeviceId = Annotated[str, Field(pattern=ID_PATTERN)]
# Generations are stored in 32-bit integer columns (PostgreSQL INTEGER); a larger one from a
# device would fail the hub's whole event batch at INSERT time instead of being rejected here.
Generation = Annotated[int, Field(ge=0, le=2**31 - 1)]


def _as_utc(value: datetime) -> datetime:
    # The hub stores and compares these times as aware UTC: a naive time (read as UTC) or one
    # that cannot be expressed in UTC (year 1 at +05:00) must not reach the database.
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("time out of range in UTC") from None


UtcTime = Annotated[datetime, AfterValidator(_as_utc)]


# ---- agent -> hub: state (retained) --------------------------------------------------------

class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = Field(max_length=32)
    cores: int = Field(ge=1, le=4096)
    ram_mb: int = Field(ge=1)
    accelerators: list[str] = Field(default_factory=list, max_length=16)
    # What emulates this CPU (e.g. qemu-user), None on real hardware: its timings mean nothing.
    emulated: str | None = Field(None, max_length=64)


# A slot is named by its model (and served at /predict/<model>): no slash, no control characters.
SlotName = Annotated[str, Field(pattern=r"^[^/\x00-\x1f\x7f]{1,200}$")]


class SlotState(BaseModel):
    """One model slot of a v2 agent: what it serves and what it would roll back to."""

    model_config = ConfigDict(extra="forbid")

    model: SlotName
    active_variant: str | None = Field(None, max_length=200)
    previous_variant: str | None = Field(None, max_length=200)
    requests_per_min: float | None = Field(None, ge=0)
    settings: RuntimeSettings | None = None  # what the active variant runs with (None: defaults)


class DeviceState(Body):
    device_id: DeviceId
    online: bool
    profile: str | None = Field(None, max_length=64)
    agent_version: str | None = Field(None, max_length=32)
    runtimes: dict[str, str] = Field(default_factory=dict, max_length=16)  # name -> version
    hardware: Hardware | None = None
    active_variant: str | None = Field(None, max_length=200)
    previous_variant: str | None = Field(None, max_length=200)
    cached_variants: list[str] = Field(default_factory=list, max_length=256)
    generation_seen: Generation = 0
    # v2: every slot (active_variant above is then the first slot's, for v1 readers of the state).
    slots: list[SlotState] | None = Field(None, max_length=MAX_SLOTS)
    at: UtcTime = Field(default_factory=now_utc)

    @property
    def active_variants(self) -> list[str]:
        """Every variant the device serves (one per slot)."""
        if self.slots is not None:
            return [s.active_variant for s in self.slots if s.active_variant]
        return [self.active_variant] if self.active_variant else []


# ---- hub -> agent: desired (retained) ------------------------------------------------------

class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant_id: str = Field(max_length=200)
    url: str = Field(max_length=2048)
    references_url: str | None = Field(None, max_length=2048)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    format: str = Field(max_length=32)
    precision: str = Field(max_length=16)
    manifest: SignedManifest


class BenchmarkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_budget_s: float = Field(2.0, gt=0, le=600)
    warmup_runs: int = Field(5, ge=0, le=10_000)
    min_runs: int = Field(20, ge=1, le=1_000_000)
    threads: int = Field(0, ge=0, le=256)  # 0: the runtime's default
    timeout_s: float = Field(120.0, gt=0, le=3600)
    memory_limit_mb: int | None = Field(None, gt=0)


class ModelSlot(BaseModel):
    """One model of a v2 desired state: its candidates to benchmark and the variant to activate."""

    model_config = ConfigDict(extra="forbid")

    model: SlotName
    version: int
    candidates: list[Candidate] = Field(default_factory=list, max_length=64)
    activate: str | None = Field(None, max_length=200)
    # Field telemetry of the slot's active variant: the eval set's bins (None: not reported).
    telemetry: TelemetrySettings | None = None
    # Runtime settings to measure on the leading candidates, and the ones to run `activate` with.
    tuning: TuningPlan | None = None
    activate_settings: RuntimeSettings | None = None


class DesiredState(Body):
    device_id: DeviceId
    generation: Generation
    # v1: one model in the top-level fields. v2 (schema_version 2): `slots`, the top level unused.
    model: str | None = Field(None, max_length=64)
    version: int | None = None
    candidates: list[Candidate] = Field(default_factory=list, max_length=64)
    activate: str | None = Field(None, max_length=200)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    # Field telemetry of the active variant: interval and the eval set's bins (None: not reported).
    telemetry: TelemetrySettings | None = None
    slots: list[ModelSlot] | None = Field(None, max_length=MAX_SLOTS)
    at: UtcTime = Field(default_factory=now_utc)

    @model_validator(mode="after")
    def _one_layout(self) -> DesiredState:
        if self.slots is not None:
            if self.schema_version < 2:
                raise ValueError("slots need schema_version 2")
            if self.model is not None or self.candidates or self.activate is not None:
                raise ValueError("a desired state with slots has no top-level model, candidates or activate")
            names = [s.model for s in self.slots]
            if len(set(names)) != len(names):
                raise ValueError("two slots for one model")
        return self

    def model_slots(self) -> list[ModelSlot]:
        """The slots, whichever layout the body has (a v1 body: one slot, or none)."""
        if self.slots is not None:
            return list(self.slots)
        if self.model is None:
            return []
        return [ModelSlot(model=self.model, version=self.version or 0, candidates=self.candidates,
                          activate=self.activate, telemetry=self.telemetry)]

    def all_candidates(self) -> list[Candidate]:
        return [c for s in self.model_slots() for c in s.candidates]


# ---- agent -> hub: events (QoS 1, not retained, de-duplicated by event_id) -----------------

class Sequenced(BaseModel):
    """Where an event stands in its device's stream: the agent numbers its events 1, 2, 3, ... per
    outbox (`stream` names the outbox; a wiped data directory starts a new one). The hub counts
    what it stored against the highest number it saw, so events the broker acknowledged but the
    hub never got (a subscriber that should not exist, a broker that dropped them) show up as a
    gap instead of vanishing. Optional: agents before this field send neither."""

    stream: str | None = Field(None, pattern=r"^[0-9a-f]{8,32}$")
    seq: int | None = Field(None, ge=1, le=2**53)


class Latency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p50_ms: float = Field(ge=0)
    p90_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    mean_ms: float = Field(ge=0)
    runs: int = Field(ge=0)


class Measurement(BaseModel):
    """What one benchmark of a variant measured: the benchmark child's result, and the body
    of a BenchmarkReport."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    error: str | None = Field(None, max_length=2000)
    runtime: str | None = Field(None, max_length=64)
    runtime_version: str | None = Field(None, max_length=64)
    threads: int | None = None
    load_ms: float | None = None
    warmup_ms: float | None = None
    latency: Latency | None = None
    throughput_per_s: float | None = None
    peak_rss_mb: float | None = None
    # Against the reference outputs that ship with the variant: top-1 agreement for class scores
    # (None for other outputs, e.g. embeddings), cosine for every output.
    agreement: float | None = Field(None, ge=0, le=1)
    cosine: float | None = Field(None, ge=-1.0001, le=1.0001)
    max_abs_diff: float | None = None
    # v2: the runtime settings of this run (None: the runtime's defaults), where the graph ran,
    # and a settings entry the device's runtime does not have (not a failure of the variant).
    settings: RuntimeSettings | None = None
    coverage: Coverage | None = None
    not_applicable: bool = False
    # Set when the CPU is emulated (agent/hardware.py): correctness holds, the timings do not.
    emulated: str | None = Field(None, max_length=64)


class BenchmarkReport(Body, Measurement, Sequenced):
    kind: Literal["benchmark"] = "benchmark"
    event_id: str = Field(min_length=8, max_length=64)
    device_id: DeviceId
    generation: Generation
    variant_id: str = Field(max_length=200)
    slot: SlotName | None = None  # v2
    # v2: requests per minute the device's other slots served while this ran (0: an idle device),
    # so figures taken under load are labelled as such.
    load_rpm: float | None = Field(None, ge=0)
    at: UtcTime = Field(default_factory=now_utc)


class ActivationResult(Body, Sequenced):
    kind: Literal["activation"] = "activation"
    event_id: str = Field(min_length=8, max_length=64)
    device_id: DeviceId
    generation: Generation
    variant_id: str = Field(max_length=200)
    slot: SlotName | None = None  # v2
    ok: bool
    rolled_back_to: str | None = Field(None, max_length=200)
    error: str | None = Field(None, max_length=2000)
    at: UtcTime = Field(default_factory=now_utc)


class AgentError(Body, Sequenced):
    kind: Literal["error"] = "error"
    event_id: str = Field(min_length=8, max_length=64)
    device_id: DeviceId
    generation: Generation
    variant_id: str | None = Field(None, max_length=200)
    error: str = Field(max_length=2000)
    at: UtcTime = Field(default_factory=now_utc)


class FieldTelemetry(Body, Sequenced):
    """What real requests to the active variant did over an interval (protocol/telemetry.py); several
    intervals merged into one when the device was offline (`intervals`)."""

    kind: Literal["telemetry"] = "telemetry"
    event_id: str = Field(min_length=8, max_length=64)
    device_id: DeviceId
    generation: Generation
    variant_id: str | None = Field(None, max_length=200)
    slot: SlotName | None = None  # v2
    start: UtcTime
    end: UtcTime
    intervals: int = Field(1, ge=1, le=1_000_000)
    stats: FieldStats

    @model_validator(mode="after")
    def _ordered(self) -> FieldTelemetry:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self

    @property
    def at(self) -> datetime:
        """When it was sent (the interval's end), as the other events' `at`."""
        return self.end


Event = Annotated[Union[BenchmarkReport, ActivationResult, AgentError, FieldTelemetry], Field(discriminator="kind")]



class HubState(Body):
    online: bool
    version: str = Field(max_length=32)
    public_key: str | None = Field(None, max_length=128)
    at: UtcTime = Field(default_factory=now_utc)
