"""Small paho-mqtt (2.x) helpers for tests against a real broker.

    client = connect(broker.url, "dev-a", "pw-a")          # loop running, CONNACK seen
    assert client.connect_rc == 0
    got = collect(hub, "edgehub/v1/f/devices/+/events")     # list of (topic, payload), filled live
    assert publish(client, topic, b"x") == 0                 # PUBACK reason code (135: denied)
    assert wait_for(lambda: got)
    close(client)

`Clients` keeps track of what a test opened and closes it all at the end.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

NO_MATCHING_SUBSCRIBERS = 16  # a success code: accepted, nobody subscribed
NOT_AUTHORIZED = 135
BAD_USER_OR_PASSWORD = 134


def _host_port(url_or_port: str | int) -> tuple[str, int]:
    if isinstance(url_or_port, int):
        return "127.0.0.1", url_or_port
    parsed = urlparse(url_or_port)
    if parsed.scheme not in ("mqtt", "tcp") or parsed.port is None:
        raise ValueError(f"expected mqtt://host:port or a port, got {url_or_port!r}")
    return parsed.hostname or "127.0.0.1", parsed.port


def _code(rc) -> int:
    return int(getattr(rc, "value", rc))


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is truthy (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def connect(url_or_port: str | int, username: str | None, password: str | None,
            client_id: str | None = None, v5: bool = True, *, clean_start: bool = True,
            session_expiry: int | None = None, will: tuple[str, bytes, int, bool] | None = None,
            timeout: float = 5.0, loop: bool = True) -> mqtt.Client:
    """A paho client connected (or refused) with its network loop started.

    Waits for the CONNACK: `client.connect_rc` is its reason code (0 = accepted; 134/135 =
    bad credentials / not authorized; -1 = no answer, e.g. the connection was dropped). A refused
    client has its loop stopped already (no reconnect attempts). `client.session_present` tells
    whether the broker kept a session. Client id defaults to the user name (device id == client id).
    With `loop=False` no network thread runs (the CONNACK is read in this thread): such a client
    can be cut off abruptly with `drop()`, as a crashed device would be.
    """
    host, port = _host_port(url_or_port)
    client_id = client_id if client_id is not None else (username or "")
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    kwargs = {} if v5 else {"clean_session": clean_start}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
    client.reconnect_delay_set(0.2, 1)
    if username is not None:
        client.username_pw_set(username, password)
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)

    client.connect_rc = -1
    client.session_present = False
    client.connected_event = threading.Event()
    client.disconnects = []  # reason codes of disconnects seen
    client.received = []  # (topic, payload) of every message, whatever the subscription
    client._collectors = []  # (topic filter, list)
    client._published = {}  # mid -> PUBACK reason code
    client._subscribed = {}  # mid -> list of SUBACK reason codes
    client._cond = threading.Condition()

    def on_connect(c, userdata, flags, reason_code, properties):
        c.connect_rc = _code(reason_code)
        c.session_present = bool(getattr(flags, "session_present", False))
        c.connected_event.set()

    def on_disconnect(c, userdata, flags, reason_code, properties):
        c.disconnects.append(_code(reason_code))

    def on_message(c, userdata, message):
        item = (message.topic, message.payload)
        c.received.append(item)
        for topic_filter, sink in list(c._collectors):
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                sink.append(item)

    def on_publish(c, userdata, mid, reason_code, properties):
        with c._cond:
            c._published[mid] = _code(reason_code)
            c._cond.notify_all()

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        with c._cond:
            c._subscribed[mid] = [_code(rc) for rc in reason_codes]
            c._cond.notify_all()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe

    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)
        if session_expiry:
            properties.SessionExpiryInterval = session_expiry
    connect_kwargs = {"clean_start": clean_start, "properties": properties} if v5 else {}
    try:
        client.connect(host, port, keepalive=30, **connect_kwargs)
    except OSError:
        client.connect_rc = -1
        return client
    if loop:
        client.loop_start()
        wait_connect(client, timeout)
    else:
        deadline = time.monotonic() + timeout
        while not client.connected_event.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    if client.connect_rc != 0:
        close(client)
    return client


def drop(client: mqtt.Client) -> None:
    """Cut a `loop=False` client's connection without DISCONNECT (the broker sends its will)."""
    sock = client.socket()
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def wait_connect(client: mqtt.Client, timeout: float = 5.0) -> int:
    """Wait for the CONNACK; its reason code (-1 if none came)."""
    client.connected_event.wait(timeout)
    return client.connect_rc


def try_connect(url_or_port: str | int, username: str | None, password: str | None, **kwargs) -> int:
    """Connect, return the CONNACK reason code, and close the client."""
    client = connect(url_or_port, username, password, **kwargs)
    try:
        return client.connect_rc
    finally:
        close(client)


def subscribe(client: mqtt.Client, topic: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
    """Subscribe and wait for the SUBACK; its reason codes."""
    rc, mid = client.subscribe(topic, qos)
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"subscribe to {topic!r} failed: {mqtt.error_string(rc)}")
    with client._cond:
        if not client._cond.wait_for(lambda: mid in client._subscribed, timeout):
            raise TimeoutError(f"no SUBACK for {topic!r}")
        return client._subscribed.pop(mid)


def collect(client: mqtt.Client, topic: str, qos: int = 1, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Subscribe to `topic` (shared subscriptions too) and return the live list of
    (topic, payload) received on it. The SUBACK is awaited; its codes are in `list.suback`."""
    sink: _Sink = _Sink()
    match = topic
    if topic.startswith("$share/"):
        match = topic.split("/", 2)[2]
    client._collectors.append((match, sink))
    sink.suback = subscribe(client, topic, qos, timeout)
    return sink


class _Sink(list):
    suback: list[int]


def publish(client: mqtt.Client, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
            timeout: float = 5.0) -> int:
    """Publish and wait until paho reports it sent (QoS 0) or acknowledged (QoS 1/2).

    Returns the PUBACK reason code (MQTT 5: 0 success, 16 no matching subscribers, 135 not
    authorized). -1 if nothing came back in time.
    """
    info = client.publish(topic, payload, qos=qos, retain=retain)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
    with client._cond:
        if not client._cond.wait_for(lambda: info.mid in client._published, timeout):
            return -1
        return client._published.pop(info.mid)


def close(client: mqtt.Client) -> None:
    """Disconnect (cleanly, when connected) and stop the network loop."""
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001 - cleanup must not raise
        pass
    try:
        client.loop_stop()
    except Exception:  # noqa: BLE001
        pass


class Clients:
    """Opens clients with `connect` and closes them all at the end (use as a fixture)."""

    def __init__(self):
        self._clients: list[mqtt.Client] = []

    def connect(self, *args, **kwargs) -> mqtt.Client:
        client = connect(*args, **kwargs)
        self._clients.append(client)
        return client

    def close_all(self) -> None:
        while self._clients:
            close(self._clients.pop())

    def __enter__(self) -> "Clients":
        return self

    def __exit__(self, *exc) -> None:
        self.close_all()
