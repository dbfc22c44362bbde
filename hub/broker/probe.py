"""Checking an external broker's rights before the hub trusts it (`hub serve --broker`).

A broker that checks subscriptions only when it delivers (Mosquitto's `acl_file`, an EMQX or HiveMQ
rule that filters deliveries) lets a device join the hub's shared subscription and silently take
its share of every other device's events. So at start-up the hub logs in as a probe device of its
own (`edgehub-hub-probe`, a device like any other for the broker) and tries what a hostile device
would: forbidden subscriptions (each must be refused in the SUBACK) and forbidden publications
(watched by the hub's own connection: none may arrive). Its own topics must work. The verdict is
a list of findings; `hub serve` refuses to run on any (or, with --insecure-broker, warns loudly).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgehub.agent.mqtt_link import broker_address
from edgehub.hub.broker.dynsec import shared_events_filter
from edgehub.hub.broker.tls import TlsDiagnosis, broker_tls_context
from edgehub.hub.broker.tools import BrokerError, secret_file
from edgehub.protocol.topics import Topics

PROBE_USER = "edgehub-hub-probe"  # the reserved "edgehub-hub" prefix: never a real device
VICTIM = "edgehub-hub-probe-victim"  # another device, as far as the probe is concerned (never enrolled)
PROBE_PASSWORD_NAME = "probe-mqtt-password"


def probe_password_path(home: Path) -> Path:
    return home / PROBE_PASSWORD_NAME


def probe_password(home: Path) -> tuple[str, bool]:
    """The probe device's password (made on first use, 0600) and whether it was made now."""
    home.mkdir(parents=True, exist_ok=True)
    return secret_file(probe_password_path(home), nbytes=24)


def forbidden_filters(topics: Topics, share_group: str) -> list[str]:
    """Filters a device must be refused at SUBSCRIBE."""
    root = topics.root
    return [
        shared_events_filter(topics, share_group),  # the hub's own group
        shared_events_filter(topics, "edgehub-probe"),  # a group of its own on the events
        "$share/edgehub-probe/#",
        f"$share/edgehub-probe/{topics.desired(PROBE_USER)}",  # even its own topic, shared
        f"{root}/devices/+/events",
        f"{root}/devices/+/state",
        f"{root}/devices/+/desired",
        topics.desired(VICTIM),
        f"{root}/#",
        "edgehub/#",  # other fleets
        "#",
        "$SYS/#",
    ]


def forbidden_publications(topics: Topics) -> list[str]:
    """Topics a device must not be able to write (checked by what the hub's connection receives)."""
    return [topics.events(VICTIM), topics.state(VICTIM), topics.desired(PROBE_USER), topics.desired(VICTIM)]


@dataclass
class ProbeResult:
    findings: list[str] = field(default_factory=list)  # each a one-line reason the broker is unsafe
    checked: int = 0

    @property
    def safe(self) -> bool:
        return not self.findings


class _Refused:
    is_failure = True

    def __str__(self) -> str:
        return "disconnected"


REFUSED_BY_DISCONNECT = _Refused()


class _Client:
    """A paho client with waits for CONNACK, SUBACK and PUBACK."""

    def __init__(self, url: str, user: str, password: str, ca: str | None):
        self.host, self.port, tls = broker_address(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(0.1, 1)
        self.diagnosis: TlsDiagnosis | None = None
        if tls:
            context = broker_tls_context(ca)
            self.client.tls_set_context(context)
            self.diagnosis = TlsDiagnosis(self.host, self.port, context, ca, "the broker probe")
        self.user = user
        self.cond = threading.Condition()
        self.connack = None
        self.subacks: dict[int, list] = {}
        self.pubacks: dict[int, object] = {}
        self.received: list[str] = []
        self.disconnects = 0
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._put(self.subacks, mid, list(codes))
        self.client.on_publish = lambda c, u, mid, code, p: self._put(self.pubacks, mid, code)
        self.client.on_message = lambda c, u, m: self._put_message(m.topic)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = reason_code
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnects += 1
            self.connack = None
            self.cond.notify_all()

    def _put(self, table: dict, key, value) -> None:
        with self.cond:
            table[key] = value
            self.cond.notify_all()

    def _put_message(self, topic: str) -> None:
        with self.cond:
            self.received.append(topic)
            self.cond.notify_all()

    def connect(self, timeout: float) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30, clean_start=True)
        except OSError as exc:
            why = self.diagnosis.probe() if self.diagnosis is not None else str(exc)
            raise BrokerError(f"broker probe: cannot connect to {self.host}:{self.port}: {why}") from None
        self.client.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, timeout)
        if self.connack is None:
            raise BrokerError(f"broker probe: no answer from {self.host}:{self.port} for {self.user}")
        if self.connack.is_failure:
            raise BrokerError(f"broker probe: the broker refused {self.user} ({self.connack})")

    def subscribe(self, topic: str, timeout: float) -> list:
        """The SUBACK's reason codes. A broker that disconnects a client for a forbidden
        subscription (EMQX's deny_action = disconnect) refused it: [REFUSED_BY_DISCONNECT]."""
        before = self.disconnects
        rc, mid = self.client.subscribe([(topic, SubscribeOptions(qos=1))])
        with self.cond:
            self.cond.wait_for(lambda: mid in self.subacks or self.disconnects > before, timeout)
            if mid in self.subacks:
                return self.subacks.pop(mid)
            cut = self.disconnects > before
        if not cut:
            raise BrokerError(f"broker probe: no SUBACK for {topic!r}")
        self._reconnect(timeout)
        return [REFUSED_BY_DISCONNECT]

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        before = self.disconnects
        info = self.client.publish(topic, payload, qos=1)
        with self.cond:
            self.cond.wait_for(lambda: info.mid in self.pubacks or self.disconnects > before, timeout)
            self.pubacks.pop(info.mid, None)
            cut = self.disconnects > before
        if cut:
            self._reconnect(timeout)

    def _reconnect(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None and not self.connack.is_failure, timeout)
            if self.connack is None or self.connack.is_failure:
                raise BrokerError(f"broker probe: {self.user} was disconnected and could not connect again")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def probe_broker(url: str, topics: Topics, share_group: str, *, hub_user: str, hub_password: str,
                 probe_password: str, ca: str | None = None, timeout: float = 5.0) -> ProbeResult:
    """Try, as the probe device, what a device must not be able to do; report what the broker allowed.

    Raises BrokerError when the probe cannot even start (the broker is unreachable or refuses the
    probe's or the hub's credentials): the message says what to set up.
    """
    result = ProbeResult()
    hub = _Client(url, hub_user, hub_password, ca)
    hub.connect(timeout)
    probe = _Client(url, PROBE_USER, probe_password, ca)
    try:
        try:
            probe.connect(timeout)
        except BrokerError as exc:
            raise BrokerError(f"{exc}: add the probe device {PROBE_USER} to the broker with a device's rights "
                              f"and the password in {PROBE_PASSWORD_NAME} of the hub's home") from None
        # The hub watches where forbidden publications would land (plain subscriptions, not its group).
        for topic in forbidden_publications(topics):
            if any(rc.is_failure for rc in hub.subscribe(topic, timeout)):
                raise BrokerError(f"broker probe: the broker refuses the hub ({hub_user}) a subscription to {topic}: "
                                  f"the hub users need read and write on {topics.root}/#")
        for topic in (topics.desired(PROBE_USER), topics.hub_state):
            result.checked += 1
            if any(rc.is_failure for rc in probe.subscribe(topic, timeout)):
                result.findings.append(f"a device cannot subscribe to its own {topic}: devices would not work")
        for topic in forbidden_filters(topics, share_group):
            result.checked += 1
            codes = probe.subscribe(topic, timeout)
            if not all(rc.is_failure for rc in codes):
                result.findings.append(f"a device may subscribe to {topic} (SUBACK: {', '.join(map(str, codes))})")
                probe.client.unsubscribe(topic)
        marker = secrets.token_hex(8).encode()
        for topic in forbidden_publications(topics):
            result.checked += 1
            probe.publish(topic, marker, timeout)
        # Its own events are allowed and come after the forbidden ones: once the hub saw them, any
        # forbidden publication the broker let through has arrived too (one connection, in order).
        own = topics.events(PROBE_USER)
        if any(rc.is_failure for rc in hub.subscribe(own, timeout)):
            raise BrokerError(f"broker probe: the broker refuses the hub ({hub_user}) a subscription to {own}")
        probe.publish(own, marker, timeout)
        deadline = time.monotonic() + timeout
        with hub.cond:
            hub.cond.wait_for(lambda: own in hub.received, max(0.0, deadline - time.monotonic()))
            received = list(hub.received)
        if own not in received:
            result.findings.append(f"a device's own events ({own}) do not reach the hub")
        for topic in sorted(set(received) - {own}):
            result.findings.append(f"a device may publish to {topic}")
        return result
    finally:
        probe.close()
        hub.close()


__all__ = ["PROBE_USER", "ProbeResult", "forbidden_filters", "forbidden_publications", "probe_broker",
           "probe_password", "probe_password_path"]
