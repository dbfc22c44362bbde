"""`GET /metrics`: Prometheus text format (prometheus-client).

Fleet figures are read from the database at scrape time by a collector (a few GROUP BYs, the same
as `fleet status`'s summary), so every hub process reports the same truth; the fleet loop's
timings are histograms that worker 0 (in this process) observes as it works.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from edgehub.hub.client.local import LocalHub
from edgehub.hub.jobs.store import JobStore

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class _FleetCollector:
    def __init__(self, hub: LocalHub, jobs: JobStore):
        self.hub, self.jobs = hub, jobs

    def collect(self):
        summary = self.hub.context.fleet.status_summary()
        devices = GaugeMetricFamily("edgehub_devices", "Enrolled devices per profile", labels=["profile"])
        online = GaugeMetricFamily("edgehub_devices_online", "Online devices per profile", labels=["profile"])
        for profile, c in sorted(summary["profiles"].items()):
            devices.add_metric([profile], c["devices"])
            online.add_metric([profile], c["online"])
        missing = GaugeMetricFamily("edgehub_events_missing", "Numbered events devices sent that were never stored")
        missing.add_metric([], (summary.get("events_missing") or {}).get("events", 0))
        stages = GaugeMetricFamily("edgehub_rollout_stage_devices", "Devices per active rollout, stage and outcome",
                                   labels=["rollout", "stage", "outcome"])
        for r in summary["rollouts"]:
            for stage, by in r["counts"].items():
                for outcome, n in by.items():
                    stages.add_metric([str(r["id"]), str(int(stage) + 1), outcome], n)
        jobs = GaugeMetricFamily("edgehub_build_jobs", "Build jobs per state", labels=["state"])
        counts = self.jobs.counts()
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            jobs.add_metric([state], counts.get(state, 0))
        yield from (devices, online, missing, stages, jobs)


class HubMetrics:
    """The hub's Prometheus registry. `observe` is the fleet loop's hook (FleetService.observer)."""

    def __init__(self, hub: LocalHub, jobs: JobStore):
        self.registry = CollectorRegistry()
        self.registry.register(_FleetCollector(hub, jobs))
        self.events = Counter("edgehub_events_ingested", "Device events stored", registry=self.registry)
        self.ingest = Histogram("edgehub_ingest_batch_seconds", "Storing one batch of device messages",
                                buckets=_DURATION_BUCKETS, registry=self.registry)
        self.lag = Histogram("edgehub_ingest_lag_seconds", "From an event's time on the device to its storage",
                             buckets=_LAG_BUCKETS, registry=self.registry)
        self.reconcile = Histogram("edgehub_reconcile_seconds", "Reconciling one batch of devices",
                                   buckets=_DURATION_BUCKETS, registry=self.registry)
        self.requests = Counter("edgehub_api_requests", "API and console requests", ["status"], registry=self.registry)

    def observe(self, what: str, value: float) -> None:
        if what == "events":
            self.events.inc(value)
        elif what == "ingest_s":
            self.ingest.observe(value)
        elif what == "lag_s":
            self.lag.observe(max(0.0, value))
        elif what == "reconcile_s":
            self.reconcile.observe(value)
