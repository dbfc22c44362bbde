"""Device credentials against the real broker of a running hub: a device is confined to its own
topics, a wrong password is refused, and `edgehub fleet revoke` locks one device out while every
other device stays connected. Credentials come from `enroll_device` / `edgehub fleet enroll`,
exactly what a device is given.
"""

from __future__ import annotations

import base64
import http.client
import subprocess
import sys
import time

import pytest
from fault_harness import Crafted, register_crafted, wait_until
from fault_models import good_mlp
from mqtt_helpers import BAD_USER_OR_PASSWORD, NOT_AUTHORIZED, Clients, collect, publish, try_connect, wait_for

from edgehub.hub.control.url_signing import sign_artifact_url
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.enrollment import enroll_device
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.protocol.messages import AgentError, BenchmarkSettings, DeviceState
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode

T = Topics("default")
ACCEPTED = (0, 16)
REFUSED = (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)


@pytest.fixture
def hub(tmp_path):
    bench = BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, threads=1, timeout_s=30)
    service = HubService(HubPaths.from_home(tmp_path / "home"), options=HubOptions(benchmark=bench, tick_s=0.3)).start()
    yield service
    service.stop()


@pytest.fixture
def clients():
    with Clients() as pool:
        yield pool


def _enroll(hub, device):
    config = enroll_device(hub.paths, device, "x86-cpu", data_dir=hub.paths.root / device, replace=True)
    return config.password.get_secret_value()


def _event(device: str, text: str) -> bytes:
    return encode(AgentError(event_id=f"{device}-{text}-{time.monotonic_ns()}", device_id=device, generation=0,
                             error=text))


def test_a_device_cannot_act_as_another_or_read_its_desired_state(hub, clients, tmp_path):
    passwords = {d: _enroll(hub, d) for d in ("dev-a", "dev-b")}
    url = hub.broker.url
    a = clients.connect(url, "dev-a", passwords["dev-a"])
    b = clients.connect(url, "dev-b", passwords["dev-b"])
    assert a.connect_rc == 0 and b.connect_rc == 0
    everything = collect(a, "#")  # (the helper's sink sees whatever `a` gets, whichever subscription)
    a_snoops = collect(a, T.desired("dev-b"))
    assert everything.suback == [NOT_AUTHORIZED] and a_snoops.suback == [NOT_AUTHORIZED]  # at SUBSCRIBE
    assert collect(a, T.desired("dev-a")).suback == [1] and collect(a, T.hub_state).suback == [1]
    b_desired = collect(b, T.desired("dev-b"))

    # The hub writes both devices' desired states (a real deployment).
    model, refs = good_mlp(tmp_path / "m.onnx")
    register_crafted(hub.paths, hub.registry, "model", [Crafted("fp32", model, references=refs)])
    hub.fleet.deploy("model", 1, ["x86-cpu"])
    wait_until(lambda: b_desired, 30, "dev-b's desired state")

    # Publishing as dev-b: refused by the broker (MQTT 5 reason 135), nothing reaches the hub.
    forged_state = encode(DeviceState(device_id="dev-b", online=True, profile="evil"))
    assert publish(a, T.state("dev-b"), forged_state, retain=True) == NOT_AUTHORIZED
    assert publish(a, T.events("dev-b"), _event("dev-b", "forged")) == NOT_AUTHORIZED
    # On its own topic, a body naming dev-b: accepted by the broker, rejected by the hub.
    rejected = hub.service.stats["rejected"]
    assert publish(a, T.events("dev-a"), _event("dev-b", "forged-body")) in ACCEPTED
    assert publish(a, T.state("dev-a"), forged_state) in ACCEPTED
    assert wait_for(lambda: hub.service.stats["rejected"] >= rejected + 2, timeout=10)
    # Writing desired states or the hub's state: refused.
    for topic in (T.desired("dev-a"), T.desired("dev-b"), T.hub_state, "edgehub/v1/other/devices/dev-a/events"):
        assert publish(a, topic, b"{}", retain=True) == NOT_AUTHORIZED, topic
    # A sentinel dev-a may see: once it arrived, anything the broker would deliver had arrived.
    assert publish(a, T.events("dev-a"), _event("dev-a", "sentinel")) in ACCEPTED
    wait_until(lambda: any(t == T.hub_state for t, _ in everything), 10, "the hub state")
    time.sleep(0.5)

    assert a_snoops == []
    seen = {t for t, _ in everything}
    assert T.desired("dev-b") not in seen
    assert not any("/devices/dev-b/" in t for t in seen), seen
    assert seen <= {T.desired("dev-a"), T.hub_state}, seen
    assert all(e["device_id"] != "dev-b" for e in hub.fleet.events())
    device_b = hub.fleet.get_device("dev-b")
    assert device_b.state is None or device_b.state.profile != "evil"


def test_wrong_or_stolen_credentials_are_refused(hub, tmp_path):
    password = _enroll(hub, "dev-a")
    url = hub.broker.url
    assert try_connect(url, "dev-a", password) == 0
    assert try_connect(url, "dev-a", password + "x") in REFUSED
    assert try_connect(url, "dev-b", password) in REFUSED  # not enrolled
    assert try_connect(url, "edgehub-hub", password) in REFUSED
    assert try_connect(url, None, None, client_id="anonymous") in REFUSED
    # Re-enrolling issues a new password: the old one stops working at once.
    new = _enroll(hub, "dev-a")
    assert try_connect(url, "dev-a", password) in REFUSED
    assert try_connect(url, "dev-a", new) == 0


def _download_status(hub, device: str, password: str, sha: str) -> int:
    url = sign_artifact_url(hub.http.base_url, sha, device, hub.service.settings.url_secret)
    target = url[len(hub.http.base_url):]
    conn = http.client.HTTPConnection("127.0.0.1", hub.http.port, timeout=5)
    token = base64.b64encode(f"{device}:{password}".encode()).decode()
    try:
        conn.request("GET", target, headers={"Authorization": f"Basic {token}", "Range": "bytes=0-9"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_revoke_locks_one_device_out_and_keeps_the_others_connected(hub, clients, tmp_path):
    passwords = {d: _enroll(hub, d) for d in ("dev-a", "dev-b")}
    url = hub.broker.url
    a = clients.connect(url, "dev-a", passwords["dev-a"])
    b = clients.connect(url, "dev-b", passwords["dev-b"])
    assert a.connect_rc == 0 and b.connect_rc == 0
    model, refs = good_mlp(tmp_path / "m.onnx")
    sha = register_crafted(hub.paths, hub.registry, "model", [Crafted("fp32", model, references=refs)])[0].sha256
    assert _download_status(hub, "dev-a", passwords["dev-a"], sha) == 206

    # From another process, as an operator would: the CLI removes the password and reloads.
    result = subprocess.run([sys.executable, "-m", "edgehub.hub.cli", "fleet", "revoke", "dev-a", "--home",
                             str(hub.paths.root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: a.disconnects, 10, "the broker to disconnect the revoked device")
    assert try_connect(url, "dev-a", passwords["dev-a"]) in REFUSED
    assert _download_status(hub, "dev-a", passwords["dev-a"], sha) == 401  # at once, not after a cache expiry
    # dev-b never noticed: same connection, still publishing.
    assert b.disconnects == [] and b.is_connected()
    assert publish(b, T.events("dev-b"), _event("dev-b", "still-here")) in ACCEPTED
    assert _download_status(hub, "dev-b", passwords["dev-b"], sha) == 206
    assert "dev-a" not in hub.broker.files.users()
