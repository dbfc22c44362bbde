"""Subscription abuse by an enrolled device, against the real managed broker of a running hub.

A device has valid credentials and tries every subscription that would let it see or take other
devices' traffic: the hub's shared-subscription group (under its real secret name, the old fixed
name and a group of its own), wildcards over other devices' events, states and desired states,
other fleets, `$SYS`, and a retained event on its own topic. For each filter the test checks the
SUBACK reason code (refused when the SUBSCRIBE arrives, not filtered later at delivery), that the
hostile device received nothing, and that the hub stored every honest event exactly once.

The before-picture is here too: on a broker with only a read ACL (what edgehub ran before the
dynamic-security plugin), the same join of the hub's group is granted and the hub loses events;
the hub's start-up probe refuses such a broker and says why.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
from external_broker import AclFileBroker
from mqtt_helpers import NOT_AUTHORIZED, Clients, collect, publish, wait_for

from edgehub.hub.broker.dynsec import shared_events_filter
from edgehub.hub.broker.managed import ManagedBroker
from edgehub.hub.broker.probe import PROBE_USER, probe_password
from edgehub.hub.broker.tools import HUB_USER, PASSWD_NAME, BrokerError
from edgehub.hub.control.worker import LEGACY_SHARE_GROUP
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.enrollment import enroll_device
from edgehub.hub.serve.service import HubOptions, HubService, share_group
from edgehub.hub.serve.settings import HubSettings
from edgehub.protocol.messages import AgentError, BenchmarkSettings
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode

T = Topics("default")
ACCEPTED = (0, 16)
EVENTS = 40
STREAM = "5eed0001"


def _hub(home, **settings) -> HubService:
    bench = BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, threads=1, timeout_s=30)
    return HubService(HubPaths.from_home(home), HubSettings(**settings) if settings else None,
                      HubOptions(benchmark=bench, tick_s=0.3)).start()


@pytest.fixture
def hub(tmp_path):
    service = _hub(tmp_path / "home")
    yield service
    service.stop()


@pytest.fixture
def clients():
    with Clients() as pool:
        yield pool


def _enroll(paths: HubPaths, device: str) -> str:
    config = enroll_device(paths, device, "x86-cpu", data_dir=paths.root / device, replace=True)
    return config.password.get_secret_value()


def _event(device: str, seq: int, tag: str = "honest") -> bytes:
    return encode(AgentError(event_id=f"{device}-{tag}-{seq}", device_id=device, generation=0, error=f"{tag} {seq}",
                             stream=STREAM, seq=seq))


def _abuse_filters(group: str) -> list[str]:
    """What a hostile device subscribes to: every way to see another device's traffic."""
    return [
        shared_events_filter(T, group),  # the hub's own group, as if its secret name had leaked
        shared_events_filter(T, LEGACY_SHARE_GROUP),  # the group every hub used before
        shared_events_filter(T, "mine"),  # a group of its own over everyone's events
        "$share/mine/#",
        f"$share/mine/{T.desired('hostile')}",  # even its own desired topic, shared
        f"{T.root}/devices/+/events",
        f"{T.root}/devices/+/state",
        f"{T.root}/devices/+/desired",
        T.events("honest"), T.state("honest"), T.desired("honest"),
        T.events("hostile"),  # its own events: only the hub reads them
        f"{T.root}/#", f"{T.root}/+/+/+",
        "edgehub/v1/other/#", "edgehub/v1/other/devices/honest/desired", "edgehub/#", "+/#", "#",
        "$SYS/#", "$SYS/broker/clients/connected",
        "$CONTROL/dynamic-security/#",  # the broker's admin API
    ]


def _honest_events_stored(hub, count: int) -> bool:
    return sum(1 for e in hub.fleet.events("honest") if e.get("event_id", "").startswith("honest-honest-")) >= count


def _assert_every_honest_event_once(hub, count: int) -> None:
    ids = [e["event_id"] for e in hub.fleet.events("honest")]
    assert len(ids) == len(set(ids)) == count, f"{len(ids)} stored, {len(set(ids))} distinct, {count} sent"
    counted = hub.fleet.stream_counts(["honest"])["honest"]
    assert (counted.received, counted.max_seq, counted.missing) == (count, count, 0)


def test_every_abusive_subscription_is_refused_at_subscribe_and_the_hub_loses_nothing(hub, clients):
    paths = hub.paths
    passwords = {d: _enroll(paths, d) for d in ("honest", "hostile")}
    honest = clients.connect(hub.broker.url, "honest", passwords["honest"])
    hostile = clients.connect(hub.broker.url, "hostile", passwords["hostile"])
    assert honest.connect_rc == 0 and hostile.connect_rc == 0
    group = share_group(paths)
    assert group.startswith("eh-") and group != LEGACY_SHARE_GROUP

    refused = {f: collect(hostile, f).suback for f in _abuse_filters(group)}
    granted = {f: codes for f, codes in refused.items() if codes != [NOT_AUTHORIZED]}
    assert not granted, f"granted to a device: {granted}"
    # Its own topics still work: the rules are exact, not a blanket refusal.
    assert collect(hostile, T.desired("hostile")).suback == [1]
    assert collect(hostile, T.hub_state).suback == [1]
    assert hostile.is_connected() and hostile.disconnects == []

    for seq in range(1, EVENTS + 1):
        assert publish(honest, T.events("honest"), _event("honest", seq)) in ACCEPTED
    assert wait_for(lambda: _honest_events_stored(hub, EVENTS), timeout=30)
    time.sleep(0.5)  # anything still on its way to a hostile subscription would have arrived
    _assert_every_honest_event_once(hub, EVENTS)
    leaked = [t for t, _ in hostile.received if t not in (T.desired("hostile"), T.hub_state)]
    assert leaked == [], leaked[:5]


def test_a_retained_event_is_cleared_and_not_stored(hub, clients):
    """Retained on its own events topic, an event would be handed to every new subscriber (a new hub
    worker, a restarted hub) as if it were new: the hub rejects it and removes it from the broker."""
    password = _enroll(hub.paths, "hostile")
    hostile = clients.connect(hub.broker.url, "hostile", password)
    assert publish(hostile, T.events("hostile"), _event("hostile", 1, "retained"), retain=True) in ACCEPTED
    assert publish(hostile, T.events("hostile"), _event("hostile", 2, "plain")) in ACCEPTED
    assert wait_for(lambda: hub.fleet.events("hostile"), timeout=15)
    stored = [e["event_id"] for e in hub.fleet.events("hostile")]
    assert stored == ["hostile-plain-2"]
    # The broker holds nothing retained there any more: a fresh hub-side subscriber gets nothing.
    watcher = clients.connect(hub.broker.url, HUB_USER, hub.broker.files.hub_password(), client_id="watcher")
    assert watcher.connect_rc == 0
    retained = collect(watcher, T.events("hostile"))
    assert retained.suback == [1]
    time.sleep(0.5)
    assert retained == []


def test_enrolments_across_a_hub_restart_keep_every_right(tmp_path, clients):
    """Device accounts made while the hub runs (over the plugin's control topic), while it is down
    (in the accounts file) and after it came back: all log in, all are confined, nothing is lost."""
    home = tmp_path / "home"
    hub = _hub(home)
    try:
        passwords = {"honest": _enroll(hub.paths, "honest")}
        old_port = hub.broker.port
    finally:
        hub.stop()
    paths = HubPaths.from_home(home)
    passwords["while-down"] = _enroll(paths, "while-down")
    hub = _hub(home)
    try:
        assert hub.broker.port == old_port
        passwords["hostile"] = _enroll(hub.paths, "hostile")
        url, group = hub.broker.url, share_group(hub.paths)
        devices = {d: clients.connect(url, d, pw) for d, pw in passwords.items()}
        assert {d: c.connect_rc for d, c in devices.items()} == dict.fromkeys(passwords, 0)
        for device in ("while-down", "hostile"):
            codes = [collect(devices[device], f).suback for f in _abuse_filters(group)]
            assert all(c == [NOT_AUTHORIZED] for c in codes), (device, codes)
        for seq in range(1, EVENTS + 1):
            assert publish(devices["honest"], T.events("honest"), _event("honest", seq)) in ACCEPTED
        assert wait_for(lambda: _honest_events_stored(hub, EVENTS), timeout=30)
        time.sleep(0.5)
        _assert_every_honest_event_once(hub, EVENTS)
        for device in ("while-down", "hostile"):
            assert [t for t, _ in devices[device].received] == [], device
    finally:
        hub.stop()


def test_a_gap_in_a_devices_numbers_shows_in_fleet_status(hub, clients):
    """Events the broker acknowledged and the hub never stored are counted, shown per device and in
    the summary, not lost silently."""
    password = _enroll(hub.paths, "honest")
    honest = clients.connect(hub.broker.url, "honest", password)
    sent = [s for s in range(1, 11) if s not in (4, 7)]  # as if two had gone to another subscriber
    for seq in sent:
        assert publish(honest, T.events("honest"), _event("honest", seq)) in ACCEPTED
    assert wait_for(lambda: _honest_events_stored(hub, len(sent)), timeout=15)
    # A duplicate (a resend after a lost PUBACK) is one event, not a hole filled.
    assert publish(honest, T.events("honest"), _event("honest", 10)) in ACCEPTED
    time.sleep(0.5)
    out = subprocess.run([sys.executable, "-m", "edgehub.hub.cli", "fleet", "status", "--json", "--home",
                          str(hub.paths.root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["summary"]["events_missing"] == {"events": 2, "devices": 1}
    row = next(r for r in view["devices"] if r["device"] == "honest")
    assert row["events"] == {"received": 8, "missing": 2}
    table = subprocess.run([sys.executable, "-m", "edgehub.hub.cli", "fleet", "status", "--home",
                            str(hub.paths.root)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "2 event(s) from 1 device(s) were sent and never stored" in table.stdout
    assert "missing" in table.stdout


# -- the before-picture, and the probe that refuses it ------------------------------------------------

def _acl_file_broker(tmp_path, paths: HubPaths) -> AclFileBroker:
    """Today's configuration before this fix: passwords and a read/write ACL, nothing at SUBSCRIBE."""
    paths.root.mkdir(parents=True, exist_ok=True)
    hub_password = "hub-pw-" + "x" * 20
    (paths.root / "hub-mqtt-password").write_text(hub_password + "\n")
    users = {HUB_USER: hub_password, PROBE_USER: probe_password(paths.root)[0], "honest": "honest-pw",
             "hostile": "hostile-pw"}
    return AclFileBroker(tmp_path / "acl-broker", users)


def test_on_a_read_acl_broker_the_join_is_granted_and_events_are_lost(tmp_path, clients):
    """Why SUBSCRIBE must be checked: the ACL stops delivery to the hostile device, but the broker
    has already handed it its share of the group, so the hub misses those events."""
    paths = HubPaths.from_home(tmp_path / "home")
    broker = _acl_file_broker(tmp_path, paths)
    try:
        hub = clients.connect(broker.url, HUB_USER, (paths.root / "hub-mqtt-password").read_text().strip())
        honest = clients.connect(broker.url, "honest", "honest-pw")
        hostile = clients.connect(broker.url, "hostile", "hostile-pw")
        stored = collect(hub, shared_events_filter(T, "g"))
        joined = collect(hostile, shared_events_filter(T, "g"))
        assert joined.suback == [1]  # granted: the read ACL is not asked at SUBSCRIBE
        for seq in range(1, EVENTS + 1):
            assert publish(honest, T.events("honest"), _event("honest", seq)) in ACCEPTED
        time.sleep(1.0)
        print(f"read-ACL broker: the hub's group member got {len(stored)} of {EVENTS} events, the hostile one "
              f"{len(joined)}")
        assert joined == []  # the ACL filtered them at delivery ...
        assert 0 < len(stored) < EVENTS, len(stored)  # ... after the broker gave them to the hostile member
    finally:
        broker.stop()


def test_hub_serve_refuses_a_broker_that_grants_forbidden_subscriptions(tmp_path):
    paths = HubPaths.from_home(tmp_path / "home")
    broker = _acl_file_broker(tmp_path, paths)
    try:
        out = subprocess.run([sys.executable, "-m", "edgehub.hub.cli", "hub", "serve", "--broker", broker.url,
                              "--home", str(paths.root)], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        message = " ".join(out.stderr.split())
        assert "does not confine devices" in message, out.stderr
        assert f"a device may subscribe to {shared_events_filter(T, share_group(paths))}" in message
        assert "$SYS/#" in message and "--insecure-broker" in message
    finally:
        broker.stop()


def test_insecure_broker_runs_with_a_loud_warning(tmp_path, caplog):
    paths = HubPaths.from_home(tmp_path / "home")
    broker = _acl_file_broker(tmp_path, paths)
    caplog.set_level(logging.WARNING, logger="edgehub")
    try:
        hub = HubService(paths, HubSettings(broker_url=broker.url), HubOptions(tick_s=0.3, insecure_broker=True))
        hub.start()
        try:
            assert hub.service.connected.wait(10)
            assert hub.broker_probe is not None and not hub.broker_probe.safe
            warnings = [r.getMessage() for r in caplog.records if "INSECURE BROKER" in r.getMessage()]
            assert len(warnings) == len(hub.broker_probe.findings) + 1
        finally:
            hub.stop()
    finally:
        broker.stop()


def test_the_probe_passes_a_broker_that_enforces_the_rights(tmp_path):
    """The same probe against a broker set up as the README says (the plugin with these roles):
    the hub starts, with nothing to report."""
    from external_broker import operator_broker

    paths = HubPaths.from_home(tmp_path / "home")
    broker = operator_broker(tmp_path / "operator-broker", paths)
    try:
        hub = HubService(paths, HubSettings(broker_url=broker.url), HubOptions(tick_s=0.3)).start()
        try:
            assert hub.broker_probe.safe and hub.broker_probe.checked >= 15
        finally:
            hub.stop()
    finally:
        broker.stop()


def test_an_older_hubs_password_file_is_taken_over(tmp_path, clients):
    """A hub upgraded in place: its broker folder has a Mosquitto password file and no accounts
    file. Devices keep their passwords and get subscribe rules they never had."""
    folder = tmp_path / "broker"
    folder.mkdir()
    (folder / PASSWD_NAME).write_text("dev-old:old-password\n")
    subprocess.run(["mosquitto_passwd", "-U", str(folder / PASSWD_NAME)], check=True, capture_output=True)
    broker = ManagedBroker(folder, "default", share_group="eh-test").start()
    try:
        device = clients.connect(broker.url, "dev-old", "old-password")
        assert device.connect_rc == 0
        assert collect(device, "#").suback == [NOT_AUTHORIZED]
        assert collect(device, T.desired("dev-old")).suback == [1]
        assert not (folder / PASSWD_NAME).exists()
        assert "dev-old" in broker.files.users()
        assert clients.connect(broker.url, "dev-old", "wrong").connect_rc != 0
    finally:
        broker.stop()


def test_a_broker_that_refuses_the_probe_device_says_what_to_set_up(tmp_path):
    paths = HubPaths.from_home(tmp_path / "home")
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "hub-mqtt-password").write_text("hub-pw-" + "x" * 20 + "\n")
    broker = AclFileBroker(tmp_path / "acl-broker", {HUB_USER: "hub-pw-" + "x" * 20})
    try:
        hub = HubService(paths, HubSettings(broker_url=broker.url), HubOptions(tick_s=0.3))
        with pytest.raises(BrokerError, match=PROBE_USER) as caught:
            hub.start()
        assert "probe-mqtt-password" in str(caught.value) and "--insecure-broker" in str(caught.value)
        assert hub.service is None
    finally:
        broker.stop()
