"""The managed Mosquitto: generated config, authentication, ACLs, reload, supervision, persistence.

Every test runs a real broker (Mosquitto 2.x) on a free port with the generated files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from mqtt_helpers import (
    NO_MATCHING_SUBSCRIBERS,
    NOT_AUTHORIZED,
    Clients,
    close,
    collect,
    drop,
    publish,
    try_connect,
    wait_for,
)

from edgehub.hub.broker import managed as broker_mod
from edgehub.hub.broker import tools as broker_tools
from edgehub.hub.broker.files import BrokerFiles
from edgehub.hub.broker.managed import ManagedBroker, find_mosquitto
from edgehub.hub.broker.process import reload_running_broker, running_broker_pid
from edgehub.hub.broker.settings import BrokerSettings, TLSFiles
from edgehub.hub.broker.tools import HUB_USER, BrokerError, MosquittoNotFound, free_port, validate_username
from edgehub.protocol.topics import Topics

try:
    find_mosquitto()
except MosquittoNotFound as exc:  # pragma: no cover - the test machine has it
    pytest.skip(str(exc), allow_module_level=True)

FLEET = "f1"
GROUP = "hub-group-x1"  # the hub's shared-subscription group
T = Topics(FLEET)
PASSWORDS = {HUB_USER: "hub-secret-Zq8", "dev-a": "pw-a-7Xk", "dev-b": "pw-b-3Lm"}
REFUSED = (NOT_AUTHORIZED, 134)  # Mosquitto 2.0 answers 135; 134 would be as good
ACCEPTED = (0, NO_MATCHING_SUBSCRIBERS)  # MQTT 5 PUBACK codes that mean "taken"


def _make_broker(directory: Path, users: dict[str, str] = PASSWORDS, **kwargs) -> ManagedBroker:
    broker = ManagedBroker(directory, FLEET, share_group=GROUP, **kwargs)
    for user, password in users.items():
        broker.files.set_password(user, password)
    return broker.start()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    broker = _make_broker(tmp_path_factory.mktemp("shared") / "broker")
    yield broker
    broker.stop()


@pytest.fixture
def broker(tmp_path):
    broker = _make_broker(tmp_path / "broker")
    yield broker
    broker.stop()


@pytest.fixture
def clients():
    with Clients() as pool:
        yield pool


def _hub(clients: Clients, broker: ManagedBroker, **kwargs):
    client = clients.connect(broker.url, HUB_USER, PASSWORDS[HUB_USER], **kwargs)
    assert client.connect_rc == 0
    return client


def _device(clients: Clients, broker: ManagedBroker, device: str, **kwargs):
    client = clients.connect(broker.url, device, PASSWORDS[device], **kwargs)
    assert client.connect_rc == 0, f"{device} refused: {client.connect_rc}"
    return client


def _settle(hub, sink, topic: str = T.hub_state) -> None:
    """Wait until everything already queued for `sink`'s client has arrived: the hub publishes a
    non-retained marker (retained values stay) the client may read; the broker delivers in order."""
    marker = f"marker-{time.monotonic_ns()}".encode()
    assert publish(hub, topic, marker) in ACCEPTED
    assert wait_for(lambda: (topic, marker) in sink), "marker not delivered"
    sink.remove((topic, marker))


# ---- files ----------------------------------------------------------------------------------

def test_generated_files(shared_broker):
    files = shared_broker.files
    conf = files.conf_path.read_text()
    port = shared_broker.port
    for line in [
        "allow_anonymous false",
        f"plugin_opt_config_file {files.dynsec_path}",
        f"listener {port} 127.0.0.1",
        "persistence true",
        f"persistence_location {files.directory}/",
        "autosave_interval 1",
        "max_queued_messages 100000",
        "use_username_as_clientid true",
        "persistent_client_expiration 30d",
        f"log_dest file {files.log_path}",
    ]:
        assert line in conf.splitlines(), line
    assert any(line.startswith("plugin ") and line.endswith("mosquitto_dynamic_security.so")
               for line in conf.splitlines())
    assert "password_file" not in conf and "acl_file" not in conf  # never checked at SUBSCRIBE
    assert "max_inflight_messages" in conf and "log_type error" in conf
    assert shared_broker.url == f"mqtt://127.0.0.1:{port}"

    doc = json.loads(files.dynsec_path.read_text())
    assert doc["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                       "subscribe": False, "unsubscribe": True}
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]} for r in doc["roles"]}
    assert roles["device:dev-a"] == {
        ("publishClientSend", "edgehub/v1/f1/devices/dev-a/state"),
        ("publishClientSend", "edgehub/v1/f1/devices/dev-a/events"),
        ("subscribeLiteral", "edgehub/v1/f1/devices/dev-a/desired"),
        ("subscribeLiteral", "edgehub/v1/f1/hub/state"),
        ("publishClientReceive", "edgehub/v1/f1/devices/dev-a/desired"),
        ("publishClientReceive", "edgehub/v1/f1/hub/state"),
    }
    assert ("subscribeLiteral", f"$share/{GROUP}/edgehub/v1/f1/devices/+/events") in roles["edgehub-hub"]
    clients = {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}
    assert clients["dev-a"] == ["device:dev-a"] and clients[HUB_USER] == ["edgehub-hub"]

    assert sorted(files.users()) == sorted(PASSWORDS)
    for path in (files.dynsec_path, files.admin_secret_path, files.conf_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # No password in clear anywhere in the broker's folder (accounts are hashed; log clean).
    for path in files.directory.iterdir():
        if path.is_file():
            text = path.read_bytes()
            for password in PASSWORDS.values():
                assert password.encode() not in text, (path, password)


def test_tls_listener_config(tmp_path):
    tls = TLSFiles(cafile=tmp_path / "ca.pem", certfile=tmp_path / "server.pem", keyfile=tmp_path / "server.key",
                   require_certificate=True)
    files = BrokerFiles(tmp_path / "broker", FLEET, tls=tls)
    lines = files.render_config(8883, "0.0.0.0").splitlines()
    at = lines.index("listener 8883 0.0.0.0")
    assert lines[at + 1] == "use_username_as_clientid true"
    assert lines[at + 2:at + 7] == [
        f"cafile {tmp_path / 'ca.pem'}", f"certfile {tmp_path / 'server.pem'}",
        f"keyfile {tmp_path / 'server.key'}", "require_certificate true", "tls_version tlsv1.2",
    ]
    broker = ManagedBroker(tmp_path / "broker", FLEET, port=8883, host="0.0.0.0", tls=tls)
    assert broker.url == "mqtts://127.0.0.1:8883"
    with pytest.raises(ValueError):
        TLSFiles(tmp_path / "a", tmp_path / "b", tmp_path / "c", tls_version="tlsv1")


def test_extra_hub_users_get_the_hub_rights(tmp_path):
    files = BrokerFiles(tmp_path / "broker", FLEET, extra_hub_users=("edgehub-hub.2",))
    for user in (HUB_USER, "edgehub-hub.2", "edgehub-hub-7"):
        files.set_password(user, "pw")
    files.set_password("edgehub-hubx", "pw")  # not a worker name: a device
    doc = json.loads(files.dynsec_path.read_text())
    clients = {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}
    assert clients == {HUB_USER: ["edgehub-hub"], "edgehub-hub.2": ["edgehub-hub"], "edgehub-hub-7": ["edgehub-hub"],
                       "edgehub-hubx": ["device:edgehub-hubx"]}
    with pytest.raises(ValueError):
        BrokerFiles(tmp_path / "broker", FLEET, extra_hub_users=("bad/user",))


@pytest.mark.parametrize("bad", ["a/b", "#", "+", "", "dev a", "Dev-A", "-dev", ".dev", "dev\n", "dev:x",
                                 "dev+", "dev#", "x" * 65, "dév", "%u", None, 5])
def test_user_name_validation(tmp_path, bad):
    files = BrokerFiles(tmp_path / "broker", FLEET)
    with pytest.raises(ValueError):
        validate_username(bad)
    with pytest.raises(ValueError):
        files.set_password(bad, "pw")
    with pytest.raises(ValueError):
        files.remove_user(bad)
    assert files.users() == []


def test_password_validation_and_users(tmp_path):
    files = BrokerFiles(tmp_path / "broker", FLEET)
    for good in ["a", "0", "dev-a", "x" * 64, "edge.hub_1-2"]:
        assert validate_username(good) == good
    for bad_password in ["", "a\nb", "a\rb", "a\0b", "x" * 513]:
        with pytest.raises(ValueError):
            files.set_password("dev-a", bad_password)
    files.set_password("dev-a", "one")
    files.set_password("dev-b", "two")
    files.set_password("dev-a", "three")  # change: still one entry
    assert files.users() == ["dev-a", "dev-b"]
    assert files.remove_user("dev-a") is True
    assert files.remove_user("dev-a") is False
    assert files.users() == ["dev-b"]
    with pytest.raises(ValueError):
        BrokerFiles(tmp_path / "x", "Bad/Fleet")


def test_concurrent_password_edits_lose_nothing(tmp_path):
    files = BrokerFiles(tmp_path / "broker", FLEET)
    names = [f"dev-{i}" for i in range(12)]
    threads = [threading.Thread(target=files.set_password, args=(n, f"pw-{n}")) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(files.users()) == sorted(names)


def test_find_mosquitto_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker_tools, "TOOL_DIRS", (str(tmp_path),))
    with pytest.raises(MosquittoNotFound, match="apt-get install mosquitto"):
        find_mosquitto()


def test_free_port():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ---- authentication -------------------------------------------------------------------------

def test_authentication(shared_broker, clients):
    url = shared_broker.url
    assert try_connect(url, HUB_USER, PASSWORDS[HUB_USER]) == 0
    assert try_connect(url, "dev-a", PASSWORDS["dev-a"]) == 0
    assert try_connect(url, HUB_USER, "wrong") in REFUSED
    assert try_connect(url, "dev-a", PASSWORDS["dev-b"]) in REFUSED
    assert try_connect(url, "nobody", "whatever") in REFUSED
    assert try_connect(url, None, None, client_id="anon") in REFUSED
    assert try_connect(url, "", "", client_id="anon2") in REFUSED
    assert try_connect(url, HUB_USER, "wrong", v5=False) in REFUSED
    assert try_connect(url, None, None, client_id="anon3", v5=False) in REFUSED
    # A refused client is closed: no reconnect attempts hammer the broker.
    refused = clients.connect(url, "dev-a", "wrong")
    assert refused.connect_rc in REFUSED and not refused.is_connected()


# ---- ACL ------------------------------------------------------------------------------------

def test_device_writes_only_its_own_state_and_events(shared_broker, clients):
    hub = _hub(clients, shared_broker)
    events = collect(hub, f"$share/{GROUP}/{T.root}/devices/+/events")  # hub workers share the load
    states = collect(hub, f"{T.root}/devices/+/state")
    assert events.suback == [1] and states.suback == [1]
    a = _device(clients, shared_broker, "dev-a")

    assert publish(a, T.events("dev-a"), b"a-event-1") in ACCEPTED
    assert publish(a, T.state("dev-a"), b"a-state-1", retain=True) in ACCEPTED
    assert wait_for(lambda: len(events) == 1 and len(states) == 1)

    # Another device's topics: refused (MQTT 5 PUBACK 135) and never delivered.
    assert publish(a, T.events("dev-b"), b"forged-event") == NOT_AUTHORIZED
    assert publish(a, T.state("dev-b"), b"forged-state", retain=True) == NOT_AUTHORIZED
    # A sentinel from the same client: once it arrived, anything sent before it would have too.
    assert publish(a, T.events("dev-a"), b"a-event-2") in ACCEPTED
    assert wait_for(lambda: len(events) == 2)
    time.sleep(0.1)
    assert events == [(T.events("dev-a"), b"a-event-1"), (T.events("dev-a"), b"a-event-2")]
    assert states == [(T.state("dev-a"), b"a-state-1")]

    # Under MQTT 3.1.1 the broker drops the denied publish silently.
    close(a)  # the broker makes the client id "dev-a" again: one connection per device
    a3 = clients.connect(shared_broker.url, "dev-a", PASSWORDS["dev-a"], client_id="dev-a-v3", v5=False)
    assert a3.connect_rc == 0
    publish(a3, T.events("dev-b"), b"forged-v3")
    assert publish(a3, T.events("dev-a"), b"a-event-3") in ACCEPTED
    assert wait_for(lambda: len(events) == 3)
    time.sleep(0.1)
    assert [p for _, p in events] == [b"a-event-1", b"a-event-2", b"a-event-3"]


def test_device_reads_only_its_own_desired(shared_broker, clients):
    hub = _hub(clients, shared_broker)
    a = _device(clients, shared_broker, "dev-a")
    b = _device(clients, shared_broker, "dev-b")
    a_other = collect(a, T.desired("dev-b"))
    a_all = collect(a, "#")  # (the helper's sink sees whatever the client gets, whichever subscription)
    # Refused when subscribed (the plugin checks at SUBSCRIBE), not merely filtered at delivery.
    assert a_other.suback == [NOT_AUTHORIZED] and a_all.suback == [NOT_AUTHORIZED]
    a_own = collect(a, T.desired("dev-a"))
    a_hub = collect(a, T.hub_state)
    assert a_own.suback == [1] and a_hub.suback == [1]
    b_desired = collect(b, T.desired("dev-b"))

    assert publish(hub, T.desired("dev-b"), b"desired-b-1", retain=True) in ACCEPTED
    assert wait_for(lambda: b_desired == [(T.desired("dev-b"), b"desired-b-1")])
    # Sentinel on a topic dev-a may read: once it arrived, dev-b's desired would have arrived too.
    assert publish(hub, T.hub_state, b"hub-online", retain=True) in ACCEPTED
    assert wait_for(lambda: (T.hub_state, b"hub-online") in a_hub)
    time.sleep(0.1)
    assert a_other == []
    assert {topic for topic, _ in a.received} <= {T.desired("dev-a"), T.hub_state}

    # Its own desired does arrive; and a new session does not get dev-b's retained desired.
    assert publish(hub, T.desired("dev-a"), b"desired-a-1", retain=True) in ACCEPTED
    assert wait_for(lambda: (T.desired("dev-a"), b"desired-a-1") in a_own)
    close(a)
    a2 = _device(clients, shared_broker, "dev-a")
    late = collect(a2, T.desired("dev-a"))
    late_hub = collect(a2, T.hub_state)
    _settle(hub, late_hub)
    assert late == [(T.desired("dev-a"), b"desired-a-1")]
    assert all("/devices/dev-b/" not in t for t, _ in a2.received)


def test_device_cannot_write_desired_or_hub_state(shared_broker, clients):
    hub = _hub(clients, shared_broker)
    assert publish(hub, T.desired("dev-b"), b"hub-desired-b", retain=True) in ACCEPTED
    assert publish(hub, T.hub_state, b"hub-state", retain=True) in ACCEPTED
    watched = collect(hub, f"{T.root}/#")
    _settle(hub, watched)  # the retained messages of earlier tests arrived
    watched.clear()

    a = _device(clients, shared_broker, "dev-a")
    for topic in (T.desired("dev-a"), T.desired("dev-b"), T.hub_state,
                  "edgehub/v1/other-fleet/devices/dev-a/state", "edgehub/v1/f1/devices/dev-a/other",
                  "edgehub/v1/f1/devices/dev-a", "something/else"):
        assert publish(a, topic, b"forged", retain=True) == NOT_AUTHORIZED, topic
    assert publish(a, T.events("dev-a"), b"sentinel") in ACCEPTED
    assert wait_for(lambda: (T.events("dev-a"), b"sentinel") in watched)
    time.sleep(0.1)
    assert watched == [(T.events("dev-a"), b"sentinel")]

    # The retained values are still the hub's.
    b = _device(clients, shared_broker, "dev-b")
    got = collect(b, T.desired("dev-b"))
    got_hub = collect(b, T.hub_state)
    _settle(hub, got_hub)
    assert got == [(T.desired("dev-b"), b"hub-desired-b")] and got_hub == [(T.hub_state, b"hub-state")]


def test_forged_last_will_is_not_delivered(shared_broker, clients):
    hub = _hub(clients, shared_broker)
    states = collect(hub, f"{T.root}/devices/+/state")
    for v5 in (True, False):
        forger = clients.connect(shared_broker.url, "dev-b", PASSWORDS["dev-b"], v5=v5,
                                 will=(T.state("dev-a"), b"forged-will", 1, False), loop=False)
        assert forger.connect_rc == 0
        drop(forger)  # dies without DISCONNECT: the broker sends the will
    honest = clients.connect(shared_broker.url, "dev-b", PASSWORDS["dev-b"],
                             will=(T.state("dev-b"), b"offline", 1, False), loop=False)
    assert honest.connect_rc == 0
    drop(honest)
    assert wait_for(lambda: (T.state("dev-b"), b"offline") in states)
    time.sleep(0.1)
    assert (T.state("dev-a"), b"forged-will") not in states


def test_device_cannot_take_over_another_devices_client_id(shared_broker, clients):
    """The broker replaces the client id by the user name: dev-a connecting as client "dev-b"
    neither disconnects dev-b nor gets (or destroys) dev-b's persistent session."""
    hub = _hub(clients, shared_broker)
    b = _device(clients, shared_broker, "dev-b", clean_start=False, session_expiry=3600)
    collect(b, f"{T.root}/devices/dev-b/events-for-test")  # any subscription, kept in the session
    collect(b, T.desired("dev-b"))
    close(b)
    assert publish(hub, T.desired("dev-b"), b"queued-for-b") in ACCEPTED  # not retained: queued

    thief = _device(clients, shared_broker, "dev-a", client_id="dev-b", clean_start=False, session_expiry=3600)
    assert not thief.session_present
    b = _device(clients, shared_broker, "dev-b", clean_start=False, session_expiry=3600)
    assert b.session_present
    assert wait_for(lambda: (T.desired("dev-b"), b"queued-for-b") in b.received)
    # While dev-b is online, the same trick does not kick it off.
    close(thief)
    thief2 = _device(clients, shared_broker, "dev-a", client_id="dev-b", clean_start=True)
    assert publish(hub, T.desired("dev-b"), b"live-for-b") in ACCEPTED
    assert wait_for(lambda: (T.desired("dev-b"), b"live-for-b") in b.received)
    assert b.is_connected() and b.disconnects == []
    assert all(topic != T.desired("dev-b") for topic, _ in thief.received + thief2.received)


# ---- reload ---------------------------------------------------------------------------------

def test_accounts_change_at_once_without_a_reload(broker, clients):
    hub = _hub(clients, broker)
    echo = collect(hub, f"{T.root}/hub/state")
    reloads = broker.files.log_path.read_text().count("Reloading config")
    broker.files.set_password("dev-c", "pw-c")  # through the plugin's control topic: effective at once
    c = clients.connect(broker.url, "dev-c", "pw-c")
    assert c.connect_rc == 0
    assert publish(c, T.events("dev-c"), b"c-event") in ACCEPTED  # with its own device role
    assert publish(c, T.events("dev-a"), b"c-as-a") == NOT_AUTHORIZED
    # Nobody else noticed.
    assert hub.is_connected() and hub.disconnects == []
    assert publish(hub, T.hub_state, b"still-here") in ACCEPTED
    assert wait_for(lambda: echo == [(T.hub_state, b"still-here")])

    # Revoke dev-c: its live connection is dropped at once, and it cannot connect again.
    assert broker.files.remove_user("dev-c") is True
    assert "dev-c" not in broker.files.users()
    assert wait_for(lambda: not c.is_connected())
    assert try_connect(broker.url, "dev-c", "pw-c") in REFUSED
    assert hub.is_connected() and hub.disconnects == []
    assert try_connect(broker.url, "dev-a", PASSWORDS["dev-a"]) == 0

    # A new password takes effect at once too.
    broker.files.set_password("dev-a", "new-pw-a")
    assert try_connect(broker.url, "dev-a", PASSWORDS["dev-a"]) in REFUSED
    assert try_connect(broker.url, "dev-a", "new-pw-a") == 0
    assert broker.files.log_path.read_text().count("Reloading config") == reloads  # no reload was needed
    # SIGHUP still works (it reopens the log) and keeps connections.
    broker.reload()
    assert hub.is_connected() and hub.disconnects == []


def test_reload_from_another_process_and_adoption(broker, clients):
    directory = broker.directory
    assert running_broker_pid(directory) == broker.pid
    # As `edgehub fleet enroll` does, from its own process: a new BrokerFiles on the same folder.
    BrokerFiles(directory, FLEET, share_group=GROUP).set_password("dev-d", "pw-d")
    assert try_connect(broker.url, "dev-d", "pw-d") == 0
    assert reload_running_broker(directory) is True

    # A second manager of the same folder (a restarted hub) adopts the running broker.
    other = ManagedBroker(directory, FLEET, share_group=GROUP).start()
    assert other.pid == broker.pid and other.port == broker.port and other.running
    with pytest.raises(BrokerError, match="already runs"):
        ManagedBroker(directory, FLEET, share_group=GROUP, port=free_port()).start()
    other.stop()
    assert not broker.running and not other.running
    assert reload_running_broker(directory) is False
    assert running_broker_pid(directory) is None
    with pytest.raises(BrokerError, match="not running"):
        broker.reload()


# ---- supervision and persistence ------------------------------------------------------------

def test_ensure_running_restarts_a_killed_broker(broker, clients):
    port, pid = broker.port, broker.pid
    assert broker.ensure_running() is False
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not broker.running)
    assert broker.ensure_running() is True
    assert broker.running and broker.pid != pid and broker.port == port
    assert broker.restarts == 1
    assert try_connect(broker.url, "dev-a", PASSWORDS["dev-a"]) == 0
    assert broker.ensure_running() is False


def test_persistence_across_sigterm_restart(broker, clients):
    directory, port = broker.directory, broker.port
    hub = _hub(clients, broker)
    assert publish(hub, T.hub_state, b"hub-online", retain=True) in ACCEPTED
    # dev-a: a persistent session (MQTT 5 session expiry), subscribed, then offline.
    a = _device(clients, broker, "dev-a", clean_start=False, session_expiry=3600)
    collect(a, T.desired("dev-a"))
    clients.close_all()
    hub = _hub(clients, broker)
    for i in range(3):
        assert publish(hub, T.desired("dev-a"), f"queued-{i}".encode()) in ACCEPTED
    clients.close_all()

    broker.stop()
    assert not broker.running
    restarted = ManagedBroker(directory, FLEET, share_group=GROUP).start()  # no port given: the remembered one
    try:
        assert restarted.port == port
        a = _device(clients, restarted, "dev-a", clean_start=False, session_expiry=3600)
        assert a.session_present
        assert wait_for(lambda: len(a.received) == 3)
        assert a.received == [(T.desired("dev-a"), f"queued-{i}".encode()) for i in range(3)]
        b = _device(clients, restarted, "dev-b")
        got = collect(b, T.hub_state)
        assert wait_for(lambda: got == [(T.hub_state, b"hub-online")])
    finally:
        clients.close_all()
        restarted.stop()


def _db_saves_after(path: Path, count: int, timeout: float = 10.0) -> bool:
    """Wait until Mosquitto has saved its database `count` more times (autosave)."""
    def stamp():
        try:
            st = path.stat()
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return None

    seen = [stamp()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = stamp()
        if now != seen[-1]:
            seen.append(now)
            if len(seen) > count:
                return True
        time.sleep(0.02)
    return False


def test_kill_9_loses_only_what_came_after_the_last_autosave(broker, clients):
    hub = _hub(clients, broker)
    a = _device(clients, broker, "dev-a", clean_start=False, session_expiry=3600)
    collect(a, T.desired("dev-a"))
    clients.close_all()
    hub = _hub(clients, broker)
    assert publish(hub, T.hub_state, b"saved", retain=True) in ACCEPTED
    assert publish(hub, T.desired("dev-a"), b"queued-saved") in ACCEPTED
    # Two saves after the PUBACK: the second one began after the broker had the messages.
    assert _db_saves_after(broker.files.db_path, 2), "no autosave seen"
    clients.close_all()
    os.kill(broker.pid, signal.SIGKILL)
    assert wait_for(lambda: not broker.running)
    assert broker.ensure_running() is True

    a = _device(clients, broker, "dev-a", clean_start=False, session_expiry=3600)
    assert a.session_present
    assert wait_for(lambda: (T.desired("dev-a"), b"queued-saved") in a.received)
    b = _device(clients, broker, "dev-b")
    got = collect(b, T.hub_state)
    assert wait_for(lambda: got == [(T.hub_state, b"saved")])


# ---- start failures -------------------------------------------------------------------------

def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = ManagedBroker(tmp_path / "broker", FLEET, port=port)
        with pytest.raises(BrokerError, match=f"port {port}.*in use"):
            broker.start()
        assert not broker.running


def test_bad_config_fails_with_log_tail(tmp_path):
    broker = ManagedBroker(tmp_path / "broker", FLEET, start_timeout=5)
    broker.files.write(free_port())
    # The user took the config over (no managed header) and broke it.
    broker.files.conf_path.write_text("listener nonsense\nno_such_option 1\n")
    with pytest.raises(BrokerError, match="exited with code") as info:
        broker.start()
    assert "no_such_option" in str(info.value) or "Error" in str(info.value)
    assert not broker.running
    assert running_broker_pid(broker.directory) is None


def test_context_manager_and_settings(tmp_path):
    settings = BrokerSettings(max_queued_messages=5000, max_inflight_messages=10, persistent_client_expiration="2d")
    with ManagedBroker(tmp_path / "broker", FLEET, settings=settings) as broker:
        assert broker.running
        conf = broker.files.conf_path.read_text()
        assert "max_queued_messages 5000" in conf and "persistent_client_expiration 2d" in conf
        password = broker.files.hub_password()
        assert broker.files.hub_password() == password  # stable
        broker.reload()
        assert try_connect(broker.url, HUB_USER, password) == 0
        pid = broker.pid
    assert not broker.running
    assert not broker.files.pid_path.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ValueError):
        BrokerSettings(persistent_client_expiration="30 days")


def test_auto_port_taken_meanwhile_picks_another(tmp_path, monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = broker_mod.free_port
        picks = iter([taken])
        monkeypatch.setattr(broker_mod, "free_port", lambda host="127.0.0.1": next(picks, None) or real_free_port(host))
        with ManagedBroker(tmp_path / "broker", FLEET) as broker:
            assert broker.port != taken and broker.running
            assert broker.files.read_state()["port"] == broker.port
