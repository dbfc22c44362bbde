"""The real hub (`HubService`: managed Mosquitto with auth + ACL, artifact server, fleet loop, the API,
console and job runner) with a token per role and simulated devices, for API and console tests.

    with ApiHub(tmp_path / "home") as hub:
        hub.get("viewer", "/api/v1/fleet/status").json()
"""

from __future__ import annotations

from pathlib import Path

import httpx

from edgehub.hub.access.tokens import TokenStore
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.hub.serve.certs import TlsPaths
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.hub.serve.settings import HubSettings
from edgehub.hub.sim.run import Simulation, enroll_simulated

ROLES = ("viewer", "publisher", "operator", "admin")


class ApiHub:
    def __init__(self, home: Path, settings: HubSettings | None = None, telemetry_interval_s: float = 60.0):
        self.paths = HubPaths.from_home(home)
        self.service = HubService(self.paths, settings, HubOptions(tick_s=0.2, telemetry_interval_s=telemetry_interval_s)
                                  ).start()
        self.url = self.service.api.base_url
        store = TokenStore(self.service.registry.engine)
        self.tokens = {role: store.create(f"{role}-user", role)[0] for role in ROLES}
        tls = TlsPaths(self.paths.root)
        self.http = httpx.Client(base_url=self.url, timeout=60, verify=str(tls.ca_cert) if tls.enabled() else True)
        self.sims: list[Simulation] = []
        self.passwords: dict[str, str] = {}  # simulated device id -> its broker password

    @property
    def registry(self):
        return self.service.registry

    @property
    def fleet(self):
        return self.service.fleet

    def auth(self, role: str | None) -> dict:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def call(self, role: str | None, method: str, path: str, **kwargs) -> httpx.Response:
        return self.http.request(method, path, headers={**self.auth(role), **kwargs.pop("headers", {})}, **kwargs)

    def get(self, role: str | None, path: str, **kwargs) -> httpx.Response:
        return self.call(role, "GET", path, **kwargs)

    def post(self, role: str | None, path: str, **kwargs) -> httpx.Response:
        return self.call(role, "POST", path, **kwargs)

    def simulate(self, count: int, *, tags: list[str] | None = None, prefix: str = "sim",
                 distribution=None) -> Simulation:
        specs = enroll_simulated(self.paths, count, tags=tags, prefix=prefix)
        self.passwords.update({s.id: s.password for s in specs})
        sim = Simulation(self.paths, specs, processes=1, distribution=distribution).start()
        self.sims.append(sim)
        return sim

    def publish(self, model: dict, name: str = "digits", new_version: bool = False):
        return publish(PublishOptions(source=str(model["onnx"]), name=name, eval_path=model["eval"],
                                      new_version=new_version), self.paths, self.registry)

    def close(self) -> None:
        for sim in self.sims:
            sim.stop()
        self.http.close()
        self.service.stop()

    def restart(self) -> None:
        """Stop the hub (its broker too) and start it again on the same home and ports."""
        options, settings = self.service.options, self.service.settings
        self.service.stop()
        self.service = HubService(self.paths, settings, options).start()

    def __enter__(self) -> ApiHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
