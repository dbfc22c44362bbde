"""What a hub worker is given (FleetSettings), which worker owns a device, and how a worker
follows the change log."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from edgehub.hub.control.cohorts import CohortPolicy
from edgehub.hub.control.selection import Policy
from edgehub.hub.fleet.store import FleetStore
from edgehub.protocol.messages import BenchmarkSettings

BATCH_MAX = 1000  # messages stored per transaction
CHANGE_WINDOW = 1000  # ids re-read behind the cursor: PostgreSQL may commit ids out of order


@dataclass
class FleetSettings:
    fleet: str
    broker_url: str
    username: str
    password: str
    artifact_base_url: str
    url_secret: bytes
    policy: Policy
    benchmark: BenchmarkSettings
    # The shared subscription's group (serve.service.share_group): the only one hub users may join.
    share_group: str
    client_id: str = "edgehub-hub"
    tick_s: float = 1.0
    version: str = "0"
    public_key_b64: str | None = None
    # Cohort benchmarking (hub/control/cohorts.py); None: every device benchmarks every candidate.
    cohorts: CohortPolicy | None = None
    worker_index: int = 0
    worker_count: int = 1
    # MQTT 5 Receive Maximum: how many unacknowledged messages the broker may send the hub at once
    # (for MQTT 5 clients it overrides Mosquitto's max_inflight_messages). None: the broker's limit
    # (100 in the managed broker), so batches are at most that; BATCH_MAX lets a whole batch wait
    # for its commit, about 14% more events per second (bench/RESULTS.md).
    receive_maximum: int | None = None
    # CA file (PEM) for an mqtts:// broker whose certificate the system does not trust (a private CA).
    broker_ca: str | None = None
    # How often agents report field telemetry (DesiredState.telemetry); 0: they do not.
    telemetry_interval_s: float = 60.0
    # Seconds per device and model for measuring runtime settings on the leading variants; 0: off.
    tune_budget_s: float = 0.0


def owner_of(device_id: str, worker_count: int) -> int:
    """The worker that reconciles a device (stable across restarts and processes)."""
    return zlib.crc32(device_id.encode()) % worker_count


@dataclass
class ChangeFollower:
    """Reads the change log in id order, tolerating ids that commit out of order."""

    cursor: int = 0
    seen: set[int] = field(default_factory=set)

    def take(self, fleet: FleetStore):
        fresh = [c for c in fleet.changes_after(max(0, self.cursor - CHANGE_WINDOW)) if c.id not in self.seen]
        for c in fresh:
            self.seen.add(c.id)
            self.cursor = max(self.cursor, c.id)
        self.seen = {i for i in self.seen if i > self.cursor - CHANGE_WINDOW}
        return fresh
