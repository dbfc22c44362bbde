"""Extra hub workers for `edgehub hub serve --workers N`: their broker users, their settings, the
`edgehub hub worker` process and its supervision.

Worker 0 is the FleetService inside `hub serve` (user edgehub-hub); workers 1..N-1 are child
processes (users edgehub-hub-1, ...). All share the fleet's events through the MQTT 5 shared
subscription of hub/control/worker.py. Their files, under the hub home::

    broker/hub-<i>.secret        worker i's password on the managed broker (made on first use, 0600)
    hub-mqtt-password-<i>        ... on an external broker (--broker): you create the user and this file
    workers/spec.json            what `hub serve` runs with (broker, artifact URL, policy): the workers
                                 read it, so every worker reconciles with the same settings
    workers/worker-<i>.json      worker i's pid and counters, rewritten every second
    workers/worker-<i>.log       its log
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from edgehub.hub.broker.files import BrokerFiles
from edgehub.hub.broker.tools import HUB_USER, MAX_LOG_BYTES, BrokerError, locked, write_private
from edgehub.hub.control.cohorts import CohortPolicy
from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings
from edgehub.hub.control.worker import FleetService
from edgehub.hub.home import HubPaths
from edgehub.protocol.messages import BenchmarkSettings

log = logging.getLogger("edgehub.hub.workers")

MAX_WORKERS = 32
EXTERNAL_PASSWORD_NAME = "hub-mqtt-password"
STATUS_EVERY_S = 1.0
# A worker that dies sooner than this after starting is restarted after a growing delay (1 s,
# 2 s, ... 60 s), so a worker that cannot start does not spin; one that ran longer comes back at once.
HEALTHY_AFTER_S = 30.0
MAX_RESTART_DELAY_S = 60.0


class WorkerError(BrokerError):
    """Extra workers cannot run as asked (the message is one line)."""


def worker_user(index: int) -> str:
    """The broker user (and client id) of worker `index`: each connection needs its own."""
    return HUB_USER if index == 0 else f"{HUB_USER}-{index}"


def extra_users(count: int) -> tuple[str, ...]:
    return tuple(worker_user(i) for i in range(1, count))


def workers_dir(paths: HubPaths) -> Path:
    return paths.root / "workers"


def managed_password_path(files: BrokerFiles, index: int) -> Path:
    return files.directory / f"hub-{index}.secret"


def external_password_path(paths: HubPaths, index: int) -> Path:
    return paths.root / f"{EXTERNAL_PASSWORD_NAME}-{index}"


def managed_worker_password(files: BrokerFiles, index: int) -> str:
    """Worker `index`'s password on the managed broker: made (random) on first use, kept in
    broker/hub-<i>.secret (0600), and set in the broker's accounts (at once when it runs)."""
    path = managed_password_path(files, index)
    files.ensure_directory()
    with locked(files.directory):
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            password = ""
        created = not password
        if created:
            password = secrets.token_urlsafe(32)
            write_private(path, password + "\n")
    if created or not files.has_user(worker_user(index)):
        files.set_password(worker_user(index), password)
    return password


def external_worker_password(paths: HubPaths, index: int, count: int) -> str:
    """Worker `index`'s password on an external broker, from <home>/hub-mqtt-password-<i>."""
    path = external_password_path(paths, index)
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if not password:
        raise WorkerError(
            f"--workers {count} with an external broker: create the user {worker_user(index)} on that broker "
            f"(the same rights as {HUB_USER}: read and write edgehub/v1/<fleet>/#) and put its password in {path}")
    return password


def indices_in(names: list[str], pattern: str) -> list[int]:
    """Worker indices (1 and up) named by files matching `pattern` (one group: the index)."""
    found = (re.fullmatch(pattern, name) for name in names)
    return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) >= 1)


def retired_indices(paths: HubPaths, broker_directory: Path | None, count: int) -> list[int]:
    """Indices >= `count` that an earlier `--workers` left credentials for, in the managed broker's
    directory (or, with None, the external broker's password files): their sessions may still be
    in the shared subscription (see hub/serve/worker_retire.py)."""
    if broker_directory is not None:
        names = [p.name for p in broker_directory.glob("hub-*.secret")]
        found = indices_in(names, r"hub-(\d+)\.secret")
    else:
        names = [p.name for p in paths.root.glob(f"{EXTERNAL_PASSWORD_NAME}-*")]
        found = indices_in(names, rf"{EXTERNAL_PASSWORD_NAME}-(\d+)")
    return [i for i in found if i >= count]


class WorkerSpec(BaseModel):
    """What every worker runs with; written by `hub serve`, read by `hub worker`."""

    fleet: str
    count: int = Field(ge=1, le=MAX_WORKERS)
    broker_url: str
    broker_ca: str | None = None  # CA file for an mqtts:// broker the system does not trust
    artifact_base_url: str
    url_secret_file: str
    password_files: dict[int, str]  # worker index -> file holding its broker password
    share_group: str  # the events' shared-subscription group (a per-hub secret)
    tick_s: float
    version: str
    policy: Policy
    benchmark: BenchmarkSettings
    cohorts: CohortPolicy | None = None  # None: every device benchmarks every candidate
    telemetry_interval_s: float = 60.0  # field telemetry from the agents (0: none)
    tune_budget_s: float = 0.0  # on-device runtime tuning per device and model (0: off)


def spec_path(paths: HubPaths) -> Path:
    return workers_dir(paths) / "spec.json"


def write_spec(paths: HubPaths, spec: WorkerSpec) -> None:
    workers_dir(paths).mkdir(parents=True, exist_ok=True)
    write_private(spec_path(paths), spec.model_dump_json(indent=2))


def read_spec(paths: HubPaths) -> WorkerSpec:
    try:
        return WorkerSpec.model_validate_json(spec_path(paths).read_text())
    except FileNotFoundError:
        raise WorkerError(f"no {spec_path(paths)}: `edgehub hub worker` is started by `edgehub hub serve "
                          "--workers N`, not by hand") from None


def fleet_settings(spec: WorkerSpec, index: int, password: str, url_secret: bytes,
                   public_key_b64: str | None) -> FleetSettings:
    """Worker `index`'s FleetSettings: the same for every worker but the user and the index."""
    return FleetSettings(
        fleet=spec.fleet, broker_url=spec.broker_url, broker_ca=spec.broker_ca, username=worker_user(index),
        password=password, client_id=worker_user(index), artifact_base_url=spec.artifact_base_url,
        url_secret=url_secret,
        policy=spec.policy, benchmark=spec.benchmark, share_group=spec.share_group, tick_s=spec.tick_s, version=spec.version,
        public_key_b64=public_key_b64, worker_index=index, worker_count=spec.count, cohorts=spec.cohorts,
        telemetry_interval_s=spec.telemetry_interval_s, tune_budget_s=spec.tune_budget_s)


# ---- the worker process (`edgehub hub worker`) -----------------------------------------------

def status_path(paths: HubPaths, index: int) -> Path:
    return workers_dir(paths) / f"worker-{index}.json"


def read_status(paths: HubPaths, index: int) -> dict:
    """Worker `index`'s last status ({} if none yet)."""
    try:
        data = json.loads(status_path(paths, index).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(paths: HubPaths, index: int, service: FleetService, state: str) -> None:
    body = {"index": index, "pid": os.getpid(), "state": state, "connected": service.connected.is_set(),
            "started": service.started.is_set(), "updated": time.time(), "stats": service.stats}
    write_private(status_path(paths, index), json.dumps(body, default=float))


def run_worker(paths: HubPaths, index: int, count: int) -> None:
    """Run worker `index` until SIGTERM/SIGINT, or until the `hub serve` that started it is gone."""
    from edgehub.hub.control.url_signing import load_or_create_secret
    from edgehub.hub.fleet.store import FleetStore
    from edgehub.zoo.profiles import load_profiles
    from edgehub.zoo.registry import Registry
    from edgehub.zoo.signing import HubKey

    spec = read_spec(paths)
    if spec.count != count or not 1 <= index < count:
        raise WorkerError(f"worker {index} of {count} does not match {spec_path(paths)} ({spec.count} workers)")
    password = Path(spec.password_files[index]).read_text().strip()
    settings = fleet_settings(spec, index, password, load_or_create_secret(Path(spec.url_secret_file)),
                              HubKey.load_or_create(paths.keys_dir).public_b64)
    registry, fleet = Registry(paths.db_url), FleetStore(paths.db_url)
    service = FleetService(settings, registry, fleet, load_profiles())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    service.start()
    log.info("hub worker %d of %d up (pid %d, user %s)", index, count, os.getpid(), settings.username)
    try:
        while not stop.wait(STATUS_EVERY_S):
            write_status(paths, index, service, "running")
            if os.getppid() != parent:  # `hub serve` was killed: do not linger as an orphan
                log.warning("hub worker %d: hub serve (pid %d) is gone; stopping", index, parent)
                break
    finally:
        service.stop()
        write_status(paths, index, service, "stopped")
        registry.close()
        fleet.close()


# ---- supervision (in `hub serve`) -------------------------------------------------------------

@dataclass
class _Child:
    index: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    not_before: float = 0.0  # earliest restart
    delay: float = 0.0
    restarts: int = 0


class WorkerPool:
    """Workers 1..count-1 as `edgehub hub worker` child processes: started, restarted if one
    dies (ensure_running), stopped with SIGTERM (SIGKILL after `timeout`)."""

    def __init__(self, paths: HubPaths, count: int):
        self.paths, self.count = paths, count
        self.children = [_Child(i) for i in range(1, count)]

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "edgehub.hub.cli", "hub", "worker", "--index", str(index),
                "--count", str(self.count), "--home", str(self.paths.root)]

    def _spawn(self, child: _Child) -> None:
        log_path = workers_dir(self.paths) / f"worker-{child.index}.log"
        with contextlib.suppress(FileNotFoundError):
            if log_path.stat().st_size > MAX_LOG_BYTES:
                os.replace(log_path, log_path.with_name(log_path.name + ".1"))
        status_path(self.paths, child.index).unlink(missing_ok=True)  # no stale "started" from before
        with open(log_path, "ab") as out:
            # Its own session: a Ctrl-C of `hub serve` reaches the hub, which then stops the
            # workers in order (SIGTERM), rather than every process at once.
            child.proc = subprocess.Popen(self.command(child.index), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
        child.started_at = time.monotonic()
        log.info("hub worker %d started (pid %d)", child.index, child.proc.pid)

    def start(self) -> WorkerPool:
        workers_dir(self.paths).mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)
        return self

    def ensure_running(self) -> list[int]:
        """Restart the workers that exited; returns their indices. Cheap: call it every second."""
        restarted, now = [], time.monotonic()
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.not_before == 0.0:  # just noticed: decide when it may come back
                quick = now - child.started_at < HEALTHY_AFTER_S
                child.delay = min(MAX_RESTART_DELAY_S, max(1.0, child.delay * 2)) if quick else 0.0
                child.not_before = now + child.delay
                log.warning("hub worker %d (pid %d) exited with code %s; restarting it in %.0f s (log %s)",
                            child.index, child.proc.pid, child.proc.returncode, child.delay,
                            workers_dir(self.paths) / f"worker-{child.index}.log")
            if now >= child.not_before:
                child.not_before = 0.0
                child.restarts += 1
                self._spawn(child)
                restarted.append(child.index)
        return restarted

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    def stop(self, timeout: float = 30.0) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("hub worker pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(5)
        for child in self.children:
            child.proc = None


__all__ = [
    "MAX_WORKERS",
    "WorkerError",
    "WorkerPool",
    "WorkerSpec",
    "external_worker_password",
    "extra_users",
    "fleet_settings",
    "managed_worker_password",
    "read_spec",
    "read_status",
    "retired_indices",
    "run_worker",
    "worker_user",
    "write_spec",
]
