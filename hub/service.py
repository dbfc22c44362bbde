"""`edgehub hub serve`: broker (managed or external), artifact HTTP server and fleet loop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgehub.agent.messages import BenchmarkSettings
from edgehub.hub.artifact_server import ArtifactServer
from edgehub.hub.broker import ManagedBroker, TLSFiles, free_port
from edgehub.hub.certs import TlsPaths, server_context
from edgehub.hub.credentials import PasswordChecker
from edgehub.hub.fleet_service import FleetService, FleetSettings
from edgehub.hub.hub_settings import HubSettings, load_settings, save_settings
from edgehub.hub.selection import Policy
from edgehub.hub.url_signing import load_or_create_secret
from edgehub.zoo.fleet import FleetStore
from edgehub.zoo.home import HubPaths
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry
from edgehub.zoo.signing import HubKey
from edgehub.zoo.store import ArtifactStore

log = logging.getLogger("edgehub.hub")


def broker_dir(paths: HubPaths) -> Path:
    return paths.root / "broker"


def url_secret_path(paths: HubPaths) -> Path:
    return paths.keys_dir / "url_secret"


def managed_broker(paths: HubPaths, settings: HubSettings) -> ManagedBroker:
    """The hub's Mosquitto; TLS-only for devices when `<home>/tls/` is enabled (`hub certs`)."""
    tls = TlsPaths(paths.root)
    files = TLSFiles(cafile=tls.ca_cert, certfile=tls.server_cert, keyfile=tls.server_key) if tls.enabled() else None
    return ManagedBroker(broker_dir(paths), settings.fleet, port=settings.mqtt_port, host=settings.mqtt_host,
                         tls=files)


@dataclass
class HubOptions:
    policy: Policy = field(default_factory=Policy)
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    tick_s: float = 1.0


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
        self.service: FleetService | None = None
        self.stopped = threading.Event()

    def start(self) -> "HubService":
        from importlib.metadata import version

        secret = load_or_create_secret(url_secret_path(self.paths))
        if self.settings.broker_url is None:
            self.broker = managed_broker(self.paths, self.settings)
            password = self.broker.files.hub_password()  # before start: the broker reads it then
            self.broker.start()
            self.broker.reload()  # a broker adopted from an earlier run re-reads the files too
            self.settings.mqtt_port = self.broker.port
            broker_url = self.broker.local_url  # with TLS: the loopback listener, on this machine
        else:
            broker_url = self.settings.broker_url
            password = (self.paths.root / "hub-mqtt-password").read_text().strip()
        if self.settings.http_port is None:
            self.settings.http_port = free_port(self.settings.http_host)
        checker = PasswordChecker(self.fleet.password_hash)
        tls = TlsPaths(self.paths.root)
        self.http = ArtifactServer(ArtifactStore(self.paths.artifacts_dir), secret, checker,
                                   host=self.settings.http_host, port=self.settings.http_port,
                                   ssl_context=server_context(tls) if tls.enabled() else None)
        self.http.start()
        save_settings(self.paths.root, self.settings)
        fleet_settings = FleetSettings(
            fleet=self.settings.fleet, broker_url=broker_url, username="edgehub-hub", password=password,
            artifact_base_url=self.settings.public_http_url or self.http.base_url, url_secret=secret,
            policy=self.options.policy, benchmark=self.options.benchmark, tick_s=self.options.tick_s,
            version=version("edgehub"), public_key_b64=self.key.public_b64,
        )
        self.service = FleetService(fleet_settings, self.registry, self.fleet, load_profiles())
        self.service.start()
        log.info("hub up: broker %s, artifacts %s, home %s", broker_url, self.http.base_url, self.paths.root)
        return self

    def stop(self) -> None:
        if self.service:
            self.service.stop()
        if self.http:
            self.http.stop()
        if self.broker:
            self.broker.stop()
        self.registry.close()
        self.fleet.close()
        self.stopped.set()

    def __enter__(self) -> "HubService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
