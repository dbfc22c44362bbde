"""Fleet tables: devices, tags, desired states, events, benchmark results, deployments,
aliases, rollouts, cohorts and the change log the hub workers follow.

They share the registry's `Base`, so one `create_all` makes every table on SQLite or PostgreSQL.
Every fleet query has an index: devices by profile / online / cohort, tags by tag, benchmark
results by device (primary key prefix) and by variant, rollout members by (rollout, stage,
status) and by device, changes by id.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgehub.zoo.schema import Base, UTCDateTime


class DeviceRow(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_profile_online", "profile", "online"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    profile: Mapped[str] = mapped_column(String, index=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)  # mirrored in device_tags for queries
    password_hash: Mapped[str] = mapped_column(String)  # pbkdf2; see hub/serve/credentials.py
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    online: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    active_variant: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    # Enrolled by `edgehub fleet simulate`: its numbers come from a synthetic distribution.
    simulated: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # Profile + hardware + runtimes (hub/control/cohorts.py): devices that share benchmark results.
    cohort: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    # The protocol version the agent announced (1 until it says otherwise): 2 takes model slots.
    protocol: Mapped[int] = mapped_column(Integer, default=1)
    # Every slot's active variant (active_variant above is the first slot's).
    active_variants: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class DeviceTagRow(Base):
    """One tag of one device: groups are tags, and `--group` filters go through this index."""

    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String, primary_key=True, index=True)


class DesiredRow(Base):
    __tablename__ = "desired_states"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What planning needs, without parsing the body (candidates carry signed manifests): the
    # first slot in these columns (what queries by model read), every slot in `slots`.
    model: Mapped[str | None] = mapped_column(String, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    activate: Mapped[str | None] = mapped_column(String, nullable=True)
    candidate_ids: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    benchmark: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    slots: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class EventRow(Base):
    __tablename__ = "events"

    # The agent's event id: storing an event twice is a primary-key conflict, ignored.
    event_id: Mapped[str] = mapped_column(String, primary_key=True)
    device_id: Mapped[str] = mapped_column(String, index=True)
    kind: Mapped[str] = mapped_column(String)
    generation: Mapped[int] = mapped_column(Integer)
    variant_id: Mapped[str | None] = mapped_column(String, nullable=True)
    body: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EventStreamRow(Base):
    """How many of a device's numbered events the hub stored, against the highest number it saw
    (protocol/messages.Sequenced): `max_seq - received` events were sent and never stored."""

    __tablename__ = "event_streams"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    stream: Mapped[str] = mapped_column(String)
    max_seq: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger)
    # max_seq - received, kept as a column so the fleet's total is one indexed aggregate.
    missing: Mapped[int] = mapped_column(BigInteger, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BenchmarkRow(Base):
    """The newest benchmark report of one variant on one device under one set of runtime settings
    ("default", or a tuned pair's key; what selection reads)."""

    __tablename__ = "device_benchmarks"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    variant_id: Mapped[str] = mapped_column(String, primary_key=True, index=True)
    settings_key: Mapped[str] = mapped_column(String, primary_key=True, default="default")
    event_id: Mapped[str] = mapped_column(String)
    report: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Copied out of the report for selection, views and reports, which must not parse (and
    # validate) thousands of JSON bodies per batch.
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(String, nullable=True)
    runtime: Mapped[str | None] = mapped_column(String, nullable=True)
    coverage: Mapped[float | None] = mapped_column(Float, nullable=True)  # share of nodes accelerated


class DeploymentRow(Base):
    """A model version targeted at a device profile; the newest one per profile is in force."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SelectionRow(Base):
    """The hub's latest decision for a device's model slot, with the explanation for every variant."""

    __tablename__ = "selections"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    winner: Mapped[str | None] = mapped_column(String, nullable=True)
    explanation: Mapped[dict] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # sha256 of (model, version, winner, explanation): the hub rewrites a selection only when it changed.
    digest: Mapped[str | None] = mapped_column(String, nullable=True)


class AliasRow(Base):
    """A named pointer to a model version for a scope ("profile:<name>" or "group:<tag>"),
    MLflow-style: `production` is what the scope runs, `canary` what a rollout is trying. One per
    model: a scope runs each model it has a `production` alias for, side by side (model slots)."""

    __tablename__ = "aliases"

    scope: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class RolloutRow(Base):
    """A staged rollout; `state` is hub/rollout/machine.py's RolloutState as JSON (the source of truth),
    `status` and `stage` are copies for queries."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer)
    selector: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, index=True)
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RolloutDeviceRow(Base):
    """A device's stage in a rollout and how it went there: pending, activated or failed."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_progress", "rollout_id", "stage", "status"),)

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)
    stage: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String)
    variant_id: Mapped[str | None] = mapped_column(String, nullable=True)
    detail: Mapped[str | None] = mapped_column(String, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CohortSampleRow(Base):
    """A device chosen to benchmark every candidate of a model version for its cohort."""

    __tablename__ = "cohort_samples"

    cohort: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    reason: Mapped[str] = mapped_column(String)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CohortDecisionRow(Base):
    """The winner a cohort's samples agreed on for one model version."""

    __tablename__ = "cohort_decisions"

    cohort: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    winner: Mapped[str | None] = mapped_column(String, nullable=True)
    reports_used: Mapped[int] = mapped_column(Integer)
    explanation: Mapped[dict] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ChangeRow(Base):
    """An append-only log of what changed outside a worker's own batch (a deployment, an alias,
    a rollout step, a tag, a cohort decision, a device another worker owns). Hub workers follow
    it by id, so reconciliation touches only the devices a change concerns."""

    __tablename__ = "fleet_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String)
    key: Mapped[str] = mapped_column(String)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class TelemetryRow(Base):
    """One telemetry interval of a device's active variant (`raw`), or an hour of them merged
    (`hour`, made by the downsampling job). Bounded: raw for a day, hourly for 30 days."""

    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_device_end", "device_id", "end"),
                      Index("ix_telemetry_variant_end", "variant_id", "end"),
                      Index("ix_telemetry_resolution_end", "resolution", "end"))

    event_id: Mapped[str] = mapped_column(String, primary_key=True)  # the agent's: stored once
    device_id: Mapped[str] = mapped_column(String)
    variant_id: Mapped[str | None] = mapped_column(String, nullable=True)
    resolution: Mapped[str] = mapped_column(String)  # raw | hour
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    intervals: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    drift: Mapped[float | None] = mapped_column(Float, nullable=True)  # max input PSI vs the eval set
    stats: Mapped[dict] = mapped_column(JSON)  # protocol.telemetry.FieldStats


class DeviceFieldRow(Base):
    """A device's newest field figures (what `fleet status` shows), kept at ingest: one row per
    device and model slot ("" for a one-model agent's)."""

    __tablename__ = "device_field"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    slot: Mapped[str] = mapped_column(String, primary_key=True, default="")
    variant_id: Mapped[str | None] = mapped_column(String, nullable=True)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    requests_per_min: Mapped[float] = mapped_column(Float)
    error_rate: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer, default=0)  # in the newest interval
    errors: Mapped[int] = mapped_column(Integer, default=0)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    drift: Mapped[float | None] = mapped_column(Float, nullable=True)
