"""`edgehub fleet simulate`: enrol N simulated devices and run them in a few processes.

Enrolment is one database transaction (devices flagged `simulated`) and one write of the managed
broker's accounts file (a running broker is stopped and started around it: through the control
topic, thousands of devices would take minutes); each device's password is an HMAC of its id under
a secret kept in the hub's keys, so the processes derive it instead of reading a 10,000-line file.
The devices themselves are hub/sim/devices.py; their numbers come from the declared
`SyntheticDistribution` (hub/sim/model.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import multiprocessing
import os
import time
from pathlib import Path

from edgehub.hub.fleet.records import EnrollRequest, FleetError
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.credentials import hash_password
from edgehub.hub.serve.service import managed_broker
from edgehub.hub.serve.settings import load_settings
from edgehub.hub.sim.devices import process_main
from edgehub.hub.sim.model import DeviceSpec, ProcessSpec, SyntheticDistribution
from edgehub.zoo.profiles import get_profile, load_profiles
from edgehub.zoo.signing import HubKey

SECRET_NAME = "simulation_secret"
PER_ADDRESS = 5000  # connections per 127.0.0.x source address (TIME_WAIT past ~10k from one)
# Simulated devices never download artifacts; a cheap hash lets 10,000 enrol in seconds.
SIM_HASH_ITERATIONS = 1000


class SimulationError(FleetError):
    """A simulation that cannot start (the message is one line)."""


def _secret(paths: HubPaths) -> bytes:
    path = paths.keys_dir / SECRET_NAME
    if not path.exists():
        paths.keys_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    return path.read_bytes()


def sim_password(secret: bytes, device_id: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, device_id.encode(), hashlib.sha256).digest()).decode()[:32]


def sim_ids(prefix: str, count: int) -> list[str]:
    width = max(5, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


def enroll_simulated(paths: HubPaths, count: int, *, profile: str = "x86-cpu", tags: list[str] | None = None,
                     prefix: str = "sim", profiles_file: Path | None = None) -> list[DeviceSpec]:
    """Enrol (or re-enrol) `count` simulated devices; their broker credentials are set and the
    managed broker reloaded. Returns what the simulation processes need."""
    if count < 1:
        raise SimulationError("--devices must be at least 1")
    get_profile(profile, load_profiles(profiles_file))
    settings = load_settings(paths.root)
    if settings.broker_url is not None:
        raise SimulationError("simulated devices need the hub's managed broker (their credentials are set there); "
                              "this hub uses an external broker")
    secret = _secret(paths)
    ids = sim_ids(prefix, count)
    passwords = {i: sim_password(secret, i) for i in ids}
    fleet = FleetStore(paths.db_url)
    try:
        fleet.enroll_many([EnrollRequest(id=i, profile=profile, tags=tags or [],
                                         password_hash=hash_password(passwords[i], iterations=SIM_HASH_ITERATIONS))
                           for i in ids], simulated=True, replace=True)
    finally:
        fleet.close()
    with managed_broker(paths, settings).edit_stopped() as files:
        files.add_devices(passwords)
    addresses = max(1, math.ceil(count / PER_ADDRESS))
    return [DeviceSpec(id=i, password=passwords[i], profile=profile,
                       source_address=f"127.0.0.{1 + n % addresses}" if addresses > 1 else None)
            for n, i in enumerate(ids)]


class Simulation:
    """Simulated devices in `processes` processes; `stats()` sums what they report."""

    def __init__(self, paths: HubPaths, devices: list[DeviceSpec], *, processes: int | None = None,
                 distribution: SyntheticDistribution | None = None):
        settings = load_settings(paths.root)
        if settings.mqtt_port is None:
            raise SimulationError("the hub has not chosen its broker port yet: start `edgehub hub serve` first")
        self.devices = devices
        self.processes = processes or max(1, min(os.cpu_count() or 1, math.ceil(len(devices) / 2500)))
        self.distribution = distribution or SyntheticDistribution()
        self._spec = dict(fleet=settings.fleet, host=settings.mqtt_host, port=settings.mqtt_port,
                          hub_public_key=HubKey.load_or_create(paths.keys_dir).public_b64,
                          distribution=self.distribution)
        self._procs: list = []
        self._stats: list[dict] = []
        self._stopped: set[int] = set()

    def start(self) -> Simulation:
        ctx = multiprocessing.get_context("spawn")  # the parent may run hub threads: do not fork them
        for n in range(self.processes):
            mine = self.devices[n::self.processes]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=process_main, args=(ProcessSpec(devices=mine, **self._spec), child),
                               name=f"edgehub-sim-{n}", daemon=True)
            proc.start()
            self._procs.append((proc, parent))
            self._stats.append({})
        return self

    def _read(self) -> None:
        for n, (_, conn) in enumerate(self._procs):
            while n not in self._stopped and self._readable(conn):
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):  # the process is gone
                    self._stopped.add(n)
                    break
                if kind == "stats":
                    self._stats[n] = value
                elif kind == "stopped":
                    self._stopped.add(n)

    @staticmethod
    def _readable(conn) -> bool:
        try:
            return conn.poll()
        except (EOFError, OSError):
            return False

    def stats(self) -> dict[str, int]:
        """Totals over the processes (connected, states_sent, reports_sent, events_acked, ...)."""
        self._read()
        total: dict[str, int] = {}
        for s in self._stats:
            for k, v in s.items():
                total[k] = total.get(k, 0) + v
        total["processes_alive"] = sum(1 for p, _ in self._procs if p.is_alive())
        return total

    def flood(self, per_device: int) -> None:
        for _, conn in self._procs:
            conn.send(("flood", per_device))

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        for proc, conn in self._procs:
            if proc.is_alive():
                try:
                    conn.send(("stop", None))
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self._stopped) < len(self._procs):
            self._read()
            time.sleep(0.05)
        final = self.stats()
        for proc, _ in self._procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        return final

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
