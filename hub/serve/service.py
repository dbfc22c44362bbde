"""`edgehub hub serve`: broker (managed or external), artifact HTTP server and fleet loop.

With `settings.workers` > 1 the fleet loop runs as several workers sharing the events over an MQTT 5
shared subscription: worker 0 in this process, the others as `edgehub hub worker` child processes
(hub/serve/workers.py), each with its own broker user.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgehub.hub.broker.managed import ManagedBroker
from edgehub.hub.broker.probe import ProbeResult, probe_broker, probe_password
from edgehub.hub.broker.settings import TLSFiles
from edgehub.hub.broker.tls import broker_tls_context
from edgehub.hub.broker.tools import HUB_USER, BrokerError, free_port, write_private
from edgehub.hub.control.cohorts import CohortPolicy
from edgehub.hub.control.selection import Policy
from edgehub.hub.control.url_signing import load_or_create_secret
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.artifact_server import ArtifactServer
from edgehub.hub.serve.certs import TlsPaths, server_context
from edgehub.hub.serve.credentials import PasswordChecker
from edgehub.hub.serve.settings import HubSettings, load_settings, save_settings
from edgehub.hub.serve.worker_retire import retire_session
from edgehub.hub.serve.workers import (
    WorkerError,
    WorkerPool,
    WorkerSpec,
    external_password_path,
    external_worker_password,
    extra_users,
    fleet_settings,
    managed_password_path,
    managed_worker_password,
    retired_indices,
    worker_user,
    write_spec,
)
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.protocol.topics import Topics
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry
from edgehub.zoo.signing import HubKey
from edgehub.zoo.store import ArtifactStore

log = logging.getLogger("edgehub.hub")


def broker_dir(paths: HubPaths) -> Path:
    return paths.root / "broker"


def url_secret_path(paths: HubPaths) -> Path:
    return paths.keys_dir / "url_secret"


SHARE_GROUP_NAME = "mqtt_share_group"


def share_group(paths: HubPaths) -> str:
    """The group of the hub's shared subscription: random per hub, kept in <home>/keys/, never told
    to a device. A device that cannot name it cannot join it, whatever a broker's rules."""
    path = paths.keys_dir / SHARE_GROUP_NAME
    try:
        group = path.read_text().strip()
    except FileNotFoundError:
        group = ""
    if not group:
        paths.keys_dir.mkdir(parents=True, exist_ok=True)
        group = "eh-" + secrets.token_hex(12)
        write_private(path, group + "\n")
    return group


def managed_broker(paths: HubPaths, settings: HubSettings, retired: tuple[int, ...] = ()) -> ManagedBroker:
    """The hub's Mosquitto; TLS-only for devices when `<home>/tls/` is enabled (`hub certs`). Its ACL
    gives every worker user (and the `retired` ones, until they are drained) the hub's rights."""
    tls = TlsPaths(paths.root)
    files = TLSFiles(cafile=tls.ca_cert, certfile=tls.server_cert, keyfile=tls.server_key) if tls.enabled() else None
    users = extra_users(settings.workers) + tuple(worker_user(i) for i in retired)
    return ManagedBroker(broker_dir(paths), settings.fleet, port=settings.mqtt_port, host=settings.mqtt_host,
                         tls=files, extra_hub_users=users, share_group=share_group(paths))


@dataclass
class HubOptions:
    policy: Policy = field(default_factory=Policy)
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    tick_s: float = 1.0
    telemetry_interval_s: float = 60.0  # how often agents report field telemetry (0: they do not)
    # An external broker that fails the start-up probe (hub/broker/probe.py): run anyway, warning.
    # Never kept for later runs: each start that accepts an unsafe broker says so.
    insecure_broker: bool = False


class HubService:
    """Everything `hub serve` runs; start() returns once it is up, stop() takes it all down."""

    def __init__(self, paths: HubPaths, settings: HubSettings | None = None, options: HubOptions | None = None):
        self.paths = paths
        self.settings = settings or load_settings(paths.root)
        self.options = options or HubOptions()
        self.registry = Registry(paths.db_url)
        self.fleet = FleetStore(paths.db_url)
        self.key = HubKey.load_or_create(paths.keys_dir)
        self.broker: ManagedBroker | None = None
        self.http: ArtifactServer | None = None
        self.api = None  # ApiServer (hub/api/server.py)
        self.jobs = None  # JobRunner (hub/jobs/runner.py)
        self.metrics = None  # HubMetrics
        self.service: FleetService | None = None
        self.workers: WorkerPool | None = None
        self.spec: WorkerSpec | None = None
        self.retired: dict[int, int] = {}  # worker index retired at start -> messages its session held
        self.broker_probe: ProbeResult | None = None  # an external broker's start-up check
        self.stopped = threading.Event()

    def start(self) -> HubService:
        try:
            return self._start()
        except BaseException:
            # No worker process, fleet loop or server is left behind. The broker is left as before
            # (it may be another run's, which the next start adopts).
            self.stop(broker=False)
            raise

    def _start(self) -> HubService:
        from importlib.metadata import version

        count = self.settings.workers
        secret = load_or_create_secret(url_secret_path(self.paths))
        if self.settings.broker_url is None:
            retired = tuple(retired_indices(self.paths, broker_dir(self.paths), count))
            self.broker = managed_broker(self.paths, self.settings, retired)
            password = self.broker.files.hub_password()  # before start: the broker reads it then
            password_files = {i: managed_password_path(self.broker.files, i) for i in (*range(1, count), *retired)}
            for i in password_files:
                managed_worker_password(self.broker.files, i)
            self.broker.start()
            self.settings.mqtt_port = self.broker.port
            broker_url = self.broker.local_url  # with TLS: the loopback listener, on this machine
        else:
            broker_url = self.settings.broker_url
            if self.settings.broker_ca is not None:
                broker_tls_context(self.settings.broker_ca)  # an unusable CA file: one line, before anything starts
            password = (self.paths.root / "hub-mqtt-password").read_text().strip()
            retired = tuple(retired_indices(self.paths, None, count))
            for i in range(1, count):  # fail before anything starts if a worker has no credentials
                external_worker_password(self.paths, i, count)
            password_files = {i: external_password_path(self.paths, i) for i in (*range(1, count), *retired)}
            self._probe_broker(broker_url, password)
        if self.settings.http_port is None:
            self.settings.http_port = free_port(self.settings.http_host)
        checker = PasswordChecker(self.fleet.password_hash)
        tls = TlsPaths(self.paths.root)
        self.http = ArtifactServer(ArtifactStore(self.paths.artifacts_dir), secret, checker,
                                   host=self.settings.http_host, port=self.settings.http_port,
                                   ssl_context=server_context(tls) if tls.enabled() else None)
        self.http.start()
        save_settings(self.paths.root, self.settings)
        self.spec = WorkerSpec(
            fleet=self.settings.fleet, count=count, broker_url=broker_url,
            # The managed broker is reached on its plain loopback listener: no CA to give.
            broker_ca=self.settings.broker_ca if self.broker is None else None,
            artifact_base_url=self.settings.public_http_url or self.http.base_url,
            url_secret_file=str(url_secret_path(self.paths)),
            password_files={i: str(path) for i, path in password_files.items()}, share_group=share_group(self.paths),
            tick_s=self.options.tick_s, telemetry_interval_s=self.options.telemetry_interval_s,
            tune_budget_s=self.settings.tune_budget_s,
            version=version("edgehub"), policy=self.options.policy, benchmark=self.options.benchmark,
            cohorts=CohortPolicy(sample_size=self.settings.cohort_sample) if self.settings.cohort_sample else None)
        self.service = FleetService(fleet_settings(self.spec, 0, password, secret, self.key.public_b64),
                                    self.registry, self.fleet, load_profiles())
        if self.settings.api_port != 0:
            self._start_api(tls)
        self.service.start()
        if count > 1:
            write_spec(self.paths, self.spec)
            self.workers = WorkerPool(self.paths, count).start()
        self._retire(retired, secret)
        log.info("hub up: broker %s, artifacts %s, API and console %s, %d worker(s), home %s", broker_url,
                 self.http.base_url, self.api.base_url + "/console" if self.api else "(off)", count, self.paths.root)
        return self

    def _start_api(self, tls: TlsPaths) -> None:
        """The API, console and /metrics (hub/api/), and the runner of their build jobs."""
        from edgehub.hub.api.app import create_app
        from edgehub.hub.api.server import ApiServer
        from edgehub.hub.jobs.runner import JobRunner

        if self.settings.api_port is None:
            self.settings.api_port = free_port(self.settings.api_host)
            save_settings(self.paths.root, self.settings)
        app = create_app(self.paths, max_upload_bytes=self.settings.max_upload_mb * 1024 * 1024,
                         secure_cookies=tls.enabled())
        self.metrics = app.state.metrics
        self.service.observer = self.metrics.observe  # the fleet loop's timings on /metrics
        self.api = ApiServer(app, self.settings.api_host, self.settings.api_port,
                             tls if tls.enabled() else None).start()
        self.jobs = JobRunner(self.paths, slots=self.settings.job_slots).start()

    def _probe_broker(self, broker_url: str, hub_password: str) -> None:
        """Refuse an external broker that lets a device subscribe to, or publish on, what it must
        not (hub/broker/probe.py); with `insecure_broker`, warn instead."""
        probe_pw, _ = probe_password(self.paths.root)
        try:
            result = probe_broker(broker_url, Topics(self.settings.fleet), share_group(self.paths), hub_user=HUB_USER,
                                  hub_password=hub_password, probe_password=probe_pw, ca=self.settings.broker_ca)
        except BrokerError as exc:
            if not self.options.insecure_broker:
                raise BrokerError(f"{exc} (or run with --insecure-broker to skip this check)") from None
            log.warning("INSECURE BROKER: could not check %s (%s); running anyway (--insecure-broker)", broker_url, exc)
            return
        self.broker_probe = result
        if result.safe:
            log.info("broker %s: a device is confined to its own topics (%d checks)", broker_url, result.checked)
            return
        summary = "; ".join(result.findings)
        if not self.options.insecure_broker:
            raise BrokerError(f"the broker {broker_url} does not confine devices: {summary}. A device could take "
                              "other devices' events. Deny these at SUBSCRIBE (README: External brokers), or run with "
                              "--insecure-broker")
        for finding in result.findings:
            log.warning("INSECURE BROKER %s: %s", broker_url, finding)
        log.warning("INSECURE BROKER: running anyway (--insecure-broker); a device could take other devices' events")

    def _retire(self, indices: tuple[int, ...], secret: bytes) -> None:
        """Drain and end the sessions of workers an earlier, larger `--workers` left (hub/serve/worker_retire.py);
        then, on the managed broker, remove their users. One that fails is tried again next start."""
        done = []
        for index in indices:
            password = Path(self.spec.password_files[index]).read_text().strip()
            settings = fleet_settings(self.spec, index, password, secret, None)
            registry, fleet = Registry(self.paths.db_url), FleetStore(self.paths.db_url)
            try:
                held = retire_session(settings, FleetService(settings, registry, fleet, load_profiles()))
                log.info("retired hub worker %d (%s): stored the %d message(s) its session held", index,
                         settings.username, held)
                done.append(index)
                self.retired[index] = held
            except Exception as exc:  # noqa: BLE001 - best effort: the session is kept and retried next start
                log.warning("could not retire hub worker %d yet (%s); trying again on the next start", index,
                            exc if isinstance(exc, WorkerError) else repr(exc))
            finally:
                registry.close()
                fleet.close()
        if self.broker is None:
            for index in done:
                log.info("hub worker %d is retired: you may remove the user %s from the broker and %s", index,
                         worker_user(index), self.spec.password_files[index])
            return
        for index in done:
            self.broker.files.remove_user(worker_user(index))
            Path(self.spec.password_files[index]).unlink(missing_ok=True)
        if done:
            self.broker.files.extra_hub_users = tuple(u for u in self.broker.files.extra_hub_users
                                                      if u not in {worker_user(i) for i in done})

    def supervise(self) -> list[str]:
        """Restart what died (the managed broker, worker processes); returns what was restarted.
        `hub serve` calls it every second."""
        restarted = []
        if self.broker is not None and self.broker.ensure_running():
            restarted.append("broker")
        if self.workers is not None:
            restarted += [f"worker {i}" for i in self.workers.ensure_running()]
        return restarted

    def stop(self, broker: bool = True) -> None:
        if self.workers:  # first: they disconnect from the broker while it still runs
            self.workers.stop()
        if self.service:
            self.service.stop()
        if self.http:
            self.http.stop()
        if self.jobs:
            self.jobs.stop()
        if self.api:
            self.api.stop()
            self.api.app.state.hub.close()
        if self.broker and broker:
            self.broker.stop()
        self.registry.close()
        self.fleet.close()
        self.stopped.set()

    def __enter__(self) -> HubService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
