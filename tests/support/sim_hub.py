"""A hub for simulated fleets in tests: a managed Mosquitto (auth + ACL), one or more hub workers
(FleetService, each with its own broker user and database connections, as separate processes
would have), and simulated devices in child processes. No artifact server: simulated devices
never download.

    with SimHub(tmp_path / "home", workers=2) as hub:
        devices = hub.simulate(200, tags=["lab"])
        outcome = hub.publish(tiny_mlp)
        ...
"""

from __future__ import annotations

import os
from pathlib import Path

from edgehub.hub.broker.managed import ManagedBroker
from edgehub.hub.control.cohorts import CohortPolicy
from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.hub.serve.service import broker_dir, share_group
from edgehub.hub.serve.settings import HubSettings, save_settings
from edgehub.hub.sim.model import SyntheticDistribution
from edgehub.hub.sim.run import Simulation, enroll_simulated
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry
from edgehub.zoo.signing import HubKey


class SimHub:
    def __init__(self, home: Path, *, workers: int = 1, cohorts: CohortPolicy | None = None, tick_s: float = 0.2):
        self.paths = HubPaths.from_home(home)
        self.cohorts, self.tick_s, self.worker_count = cohorts, tick_s, workers
        users = tuple(f"edgehub-hub-{i}" for i in range(1, workers))
        self.broker = ManagedBroker(broker_dir(self.paths), "default", extra_hub_users=users,
                                    share_group=share_group(self.paths))
        self.passwords = {"edgehub-hub": self.broker.files.hub_password()}
        for user in users:
            self.passwords[user] = os.urandom(12).hex()
            self.broker.files.set_password(user, self.passwords[user])
        self.broker.start()
        save_settings(self.paths.root, HubSettings(mqtt_port=self.broker.port))
        self.registry = Registry(self.paths.db_url)
        self.fleet = FleetStore(self.paths.db_url)
        self.secret = os.urandom(32)
        self.workers: list[FleetService] = []
        self.sims: list[Simulation] = []
        self.start_workers()

    def start_workers(self) -> None:
        key = HubKey.load_or_create(self.paths.keys_dir)
        for index, user in enumerate(self.passwords):
            settings = FleetSettings(
                fleet="default", broker_url=self.broker.url, username=user, password=self.passwords[user],
                client_id=user, artifact_base_url="http://127.0.0.1:9/", url_secret=self.secret, policy=Policy(),
                benchmark=BenchmarkSettings(), share_group=share_group(self.paths), tick_s=self.tick_s,
                public_key_b64=key.public_b64,
                cohorts=self.cohorts, worker_index=index, worker_count=self.worker_count)
            worker = FleetService(settings, Registry(self.paths.db_url), FleetStore(self.paths.db_url),
                                  load_profiles())
            worker.start()
            self.workers.append(worker)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
            worker.registry.close()
            worker.fleet.close()
        self.workers = []

    def restart_workers(self) -> None:
        self.stop_workers()
        self.start_workers()

    @property
    def stats(self) -> dict:
        total: dict = {}
        for w in self.workers:
            for k, v in w.stats.items():
                total[k] = total.get(k, 0) + v
        return total

    def simulate(self, count: int, *, tags: list[str] | None = None, prefix: str = "sim",
                 distribution: SyntheticDistribution | None = None, processes: int = 1) -> Simulation:
        specs = enroll_simulated(self.paths, count, tags=tags, prefix=prefix)
        sim = Simulation(self.paths, specs, processes=processes, distribution=distribution).start()
        self.sims.append(sim)
        return sim

    def publish(self, model: dict, name: str = "digits", new_version: bool = False):
        return publish(PublishOptions(source=str(model["onnx"]), name=name, eval_path=model["eval"],
                                      new_version=new_version), self.paths, self.registry)

    def rows(self, **filters) -> list[dict]:
        from edgehub.hub.fleet.views import StatusFilter

        return self.fleet.status_rows(StatusFilter(**filters))

    def close(self) -> None:
        for sim in self.sims:
            sim.stop()
        self.stop_workers()
        self.broker.stop()
        self.registry.close()
        self.fleet.close()

    def __enter__(self) -> SimHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
