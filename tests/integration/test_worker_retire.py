"""Retiring a hub worker's MQTT session against the real managed broker: what the session held is
stored (each once), the session and its place in the shared subscription are gone afterwards, and
a retire that cannot run says why and keeps the session."""

from __future__ import annotations

import pytest
from mqtt_helpers import Clients, publish, subscribe, wait_for

from edgehub.hub.broker.dynsec import shared_events_filter
from edgehub.hub.broker.managed import ManagedBroker
from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.serve.worker_retire import retire_session
from edgehub.hub.serve.workers import WorkerError, worker_user
from edgehub.protocol.messages import AgentError, BenchmarkSettings
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry

T = Topics("default")
GROUP = "eh-retire-test"
HELD = 12


@pytest.fixture
def setup(tmp_path):
    broker = ManagedBroker(tmp_path / "broker", "default", share_group=GROUP)
    broker.files.set_password(worker_user(1), "worker-1-pw")
    broker.files.set_password("dev-a", "pw-a")
    db = f"sqlite:///{tmp_path}/hub.db"
    registry, fleet = Registry(db), FleetStore(db)
    fleet.enroll("dev-a", "x86-cpu", "hash")
    with broker, Clients() as clients:
        yield broker, fleet, clients, registry
    registry.close()
    fleet.close()


def _settings(broker, index: int, count: int, password: str = "worker-1-pw") -> FleetSettings:
    return FleetSettings(fleet="default", broker_url=broker.url, username=worker_user(index), password=password,
                         client_id=worker_user(index), artifact_base_url="http://127.0.0.1:9/", url_secret=b"s" * 32,
                         policy=Policy(), benchmark=BenchmarkSettings(), share_group=GROUP, worker_index=index,
                         worker_count=count)


def _leave_a_session(broker, clients: Clients) -> None:
    """Worker 1 joins the group with a week-long session and goes away (as a stopped worker does)."""
    worker = clients.connect(broker.url, worker_user(1), "worker-1-pw", clean_start=False, session_expiry=7 * 24 * 3600)
    assert worker.connect_rc == 0
    assert subscribe(worker, shared_events_filter(T, GROUP)) == [1]
    worker.disconnect()
    assert wait_for(lambda: worker.disconnects, timeout=5)


def test_retiring_stores_what_the_session_held_and_ends_it(setup):
    broker, fleet, clients, registry = setup
    _leave_a_session(broker, clients)
    device = clients.connect(broker.url, "dev-a", "pw-a")
    for i in range(HELD):  # nobody connected in the group: the broker queues them for worker 1
        body = encode(AgentError(event_id=f"held-{i:04d}", device_id="dev-a", generation=0, error="x"))
        assert publish(device, T.events("dev-a"), body) == 0
    service = FleetService(_settings(broker, 1, 1), registry, fleet, load_profiles())
    assert retire_session(service.settings, service, quiet_s=0.5) == HELD
    assert sorted(e["event_id"] for e in fleet.events("dev-a")) == [f"held-{i:04d}" for i in range(HELD)]
    # The session is gone: worker 1 comes back to none, and events find no subscriber in the group.
    again = clients.connect(broker.url, worker_user(1), "worker-1-pw", clean_start=False, session_expiry=60)
    assert again.connect_rc == 0 and again.session_present is False
    again.disconnect()
    body = encode(AgentError(event_id="after-0001", device_id="dev-a", generation=0, error="x"))
    assert publish(device, T.events("dev-a"), body) == 16  # no matching subscribers: nobody took it silently


def test_a_worker_in_use_or_refused_is_not_retired(setup):
    broker, fleet, clients, registry = setup
    _leave_a_session(broker, clients)
    in_use = FleetService(_settings(broker, 0, 1), registry, fleet, load_profiles())
    with pytest.raises(WorkerError, match="worker 0 is in use"):
        retire_session(in_use.settings, in_use)
    wrong = FleetService(_settings(broker, 1, 1, password="not-it"), registry, fleet, load_profiles())
    with pytest.raises(WorkerError, match=r"could not retire edgehub-hub-1: the broker refused it"):
        retire_session(wrong.settings, wrong, connect_timeout_s=5)
    # The session survived the failed attempt: worker 1 finds it.
    kept = clients.connect(broker.url, worker_user(1), "worker-1-pw", clean_start=False, session_expiry=60)
    assert kept.connect_rc == 0 and kept.session_present is True
