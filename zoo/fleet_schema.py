"""Fleet tables: devices, their desired states, events, benchmark results, deployments.

They share the registry's `Base`, so one `create_all` makes every table on SQLite or PostgreSQL.
Each fleet query has an index (by profile, by device, by event id).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgehub.zoo.schema import Base, UTCDateTime


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    profile: Mapped[str] = mapped_column(String, index=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    password_hash: Mapped[str] = mapped_column(String)  # pbkdf2; see hub/credentials.py
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    online: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    active_variant: Mapped[str | None] = mapped_column(String, nullable=True)


class DesiredRow(Base):
    __tablename__ = "desired_states"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


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


class BenchmarkRow(Base):
    """The newest benchmark report of one variant on one device (what selection reads)."""

    __tablename__ = "device_benchmarks"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    variant_id: Mapped[str] = mapped_column(String, primary_key=True)
    event_id: Mapped[str] = mapped_column(String)
    report: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentRow(Base):
    """A model version targeted at a device profile; the newest one per profile is in force."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SelectionRow(Base):
    """The hub's latest decision for a device, with the explanation for every variant."""

    __tablename__ = "selections"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer)
    winner: Mapped[str | None] = mapped_column(String, nullable=True)
    explanation: Mapped[dict] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
