"""Fleet state in the registry database, as one object for the hub's services and the CLI.

`FleetStore` is a facade: it owns the engine and composes the repositories that own the tables
(devices, traffic, plans, rollouts, field telemetry, views); each public method is the repository's own, forwarded,
so `help(FleetStore.ingest)` shows TrafficLog.ingest. The repositories share nothing but `FleetDb`.

Event storage is idempotent: events carry ids chosen by the agent, and a re-delivered event
(QoS 1 means at least once) is a primary-key conflict that is skipped, never a duplicate row.
Writes a hub worker makes for a batch of messages are one transaction (`ingest`); writes made
elsewhere (a CLI command) append to the change log that the hub workers follow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from edgehub.hub.fleet.db import FleetDb
from edgehub.hub.fleet.devices import RESERVED_PREFIX, CohortOf, DeviceTable, refuse_reserved
from edgehub.hub.fleet.field import FieldTables
from edgehub.hub.fleet.plans import PlanTables
from edgehub.hub.fleet.rollouts import RolloutTables
from edgehub.hub.fleet.traffic import TrafficLog
from edgehub.hub.fleet.views import ViewQueries
from edgehub.zoo.db import make_engine
from edgehub.zoo.schema import Base

__all__ = ["FleetStore", "CohortOf", "RESERVED_PREFIX", "refuse_reserved"]


def _forward(part: str, method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return method(getattr(self, part), *args, **kwargs)
    return call


class FleetStore:
    """Devices and their traffic, behind the same SQLAlchemy URL as the registry."""

    def __init__(self, url: str | None = None, *, connect_args: dict[str, Any] | None = None,
                 engine: Engine | None = None):
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else make_engine(url, connect_args)
        Base.metadata.create_all(self.engine)
        db = FleetDb(self.engine)
        self.device_table = DeviceTable(db)
        self.traffic = TrafficLog(db)
        self.plans = PlanTables(db)
        self.rollout_tables = RolloutTables(db)
        self.views = ViewQueries(db, self.rollout_tables)
        self.field = FieldTables(db)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # DeviceTable
    enroll = _forward("device_table", DeviceTable.enroll)
    enroll_many = _forward("device_table", DeviceTable.enroll_many)
    revoke = _forward("device_table", DeviceTable.revoke)
    set_tags = _forward("device_table", DeviceTable.set_tags)
    password_hash = _forward("device_table", DeviceTable.password_hash)
    get_device = _forward("device_table", DeviceTable.get_device)
    devices = _forward("device_table", DeviceTable.devices)
    devices_by_ids = _forward("device_table", DeviceTable.devices_by_ids)
    device_facts = _forward("device_table", DeviceTable.device_facts)
    device_ids = _forward("device_table", DeviceTable.device_ids)
    # TrafficLog
    update_state = _forward("traffic", TrafficLog.update_state)
    ingest = _forward("traffic", TrafficLog.ingest)
    stream_counts = _forward("traffic", TrafficLog.stream_counts)
    events_missing = _forward("traffic", TrafficLog.events_missing)
    record_events = _forward("traffic", TrafficLog.record_events)
    events = _forward("traffic", TrafficLog.events)
    count_events = _forward("traffic", TrafficLog.count_events)
    reports = _forward("traffic", TrafficLog.reports)
    reports_many = _forward("traffic", TrafficLog.reports_many)
    report_facts = _forward("traffic", TrafficLog.report_facts)
    tuned_reports = _forward("traffic", TrafficLog.tuned_reports)
    reported_variants = _forward("traffic", TrafficLog.reported_variants)
    # PlanTables
    desired = _forward("plans", PlanTables.desired)
    set_desired = _forward("plans", PlanTables.set_desired)
    desired_summaries = _forward("plans", PlanTables.desired_summaries)
    desired_pages = _forward("plans", PlanTables.desired_pages)
    deploy = _forward("plans", PlanTables.deploy)
    deployment_for = _forward("plans", PlanTables.deployment_for)
    set_alias = _forward("plans", PlanTables.set_alias)
    delete_alias = _forward("plans", PlanTables.delete_alias)
    aliases = _forward("plans", PlanTables.aliases)
    save_selection = _forward("plans", PlanTables.save_selection)
    selection = _forward("plans", PlanTables.selection)
    selections_many = _forward("plans", PlanTables.selections_many)
    selection_digests = _forward("plans", PlanTables.selection_digests)
    cohort_samples = _forward("plans", PlanTables.cohort_samples)
    cohort_decisions = _forward("plans", PlanTables.cohort_decisions)
    save_plans = _forward("plans", PlanTables.save_plans)
    last_change_id = _forward("plans", PlanTables.last_change_id)
    changes_after = _forward("plans", PlanTables.changes_after)
    prune_changes = _forward("plans", PlanTables.prune_changes)
    # RolloutTables
    create_rollout = _forward("rollout_tables", RolloutTables.create_rollout)
    save_rollout = _forward("rollout_tables", RolloutTables.save_rollout)
    get_rollout = _forward("rollout_tables", RolloutTables.get_rollout)
    rollouts = _forward("rollout_tables", RolloutTables.rollouts)
    rollout_counts = _forward("rollout_tables", RolloutTables.rollout_counts)
    rollout_members = _forward("rollout_tables", RolloutTables.rollout_members)
    rollout_member_ids = _forward("rollout_tables", RolloutTables.rollout_member_ids)
    rollout_timeline = _forward("rollout_tables", RolloutTables.rollout_timeline)
    # FieldTables
    telemetry = _forward("field", FieldTables.telemetry)
    field_window = _forward("field", FieldTables.field_window)
    field_window_excluding = _forward("field", FieldTables.field_window_excluding)
    field_summary = _forward("field", FieldTables.field_summary)
    downsample_telemetry = _forward("field", FieldTables.downsample)
    # ViewQueries
    status_rows = _forward("views", ViewQueries.status_rows)
    status_summary = _forward("views", ViewQueries.status_summary)
    variant_benchmarks = _forward("views", ViewQueries.variant_benchmarks)
    selection_counts = _forward("views", ViewQueries.selection_counts)
    desired_counts = _forward("views", ViewQueries.desired_counts)
    device_benchmarks = _forward("views", ViewQueries.device_benchmarks)
    device_activations = _forward("views", ViewQueries.device_activations)
