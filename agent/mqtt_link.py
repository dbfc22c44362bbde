"""The agent's MQTT connection: state (retained, Last Will), events (via the outbox), desired.

paho-mqtt runs the network loop in its own thread; this class turns its callbacks into: "newest
desired state" for the daemon, and PUBACKs that clear the outbox. The session is persistent
(clean_start false, a week's expiry), so desired states published while the device was away
are waiting for it. Reconnects back off exponentially with jitter (`agent.backoff`).

Delivery of events: an event goes into the on-disk outbox first, then to paho. It leaves the
outbox only when the broker acknowledges it (PUBACK) *and* says a subscriber took it. A PUBACK
with reason 16, "no matching subscribers", means the broker dropped the event: the hub had no
subscription at that moment. That happens after every broker restart until the hub has
reconnected, because Mosquitto (2.0.11) does not restore shared subscriptions from its
persistence file. Such events stay in the outbox and are sent again with back-off. After a
reconnect paho re-sends what it had in flight; after a restart of the agent, `_on_connect`
sends what the outbox still holds. An acknowledged event stays in the outbox for a while and is
sent again after an unexpected disconnect (`Outbox.requeue_recent`): a broker killed before
it saved or delivered an event it had acknowledged must not lose it.
Each event is sent once per connection at most; the hub stores each event id once, so a
re-send after a crash between PUBACK and the outbox delete is harmless.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.agent.backoff import Backoff
from edgehub.agent.config import AgentConfig
from edgehub.agent.outbox import Outbox
from edgehub.agent.tls import client_context, describe
from edgehub.protocol.base import MessageError
from edgehub.protocol.messages import DesiredState, DeviceState
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode, parse_body

log = logging.getLogger("edgehub.agent.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our subscription and queued desired states
RECONNECT_BASE_S = 1.0
RECONNECT_CAP_S = 60.0
NO_MATCHING_SUBSCRIBERS = 16  # MQTT 5 PUBACK reason: accepted, and dropped (nobody subscribed)
_DIAGNOSE_EVERY = 10  # connection failures between two probes for the reason


def broker_address(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


class MqttLink:
    def __init__(self, config: AgentConfig, outbox: Outbox, on_desired: Callable[[DesiredState], None],
                 backoff: Backoff | None = None):
        self.config = config
        self.topics = Topics(config.fleet)
        self.outbox = outbox
        self.on_desired = on_desired
        self.connected = threading.Event()
        self.backoff = backoff or Backoff(RECONNECT_BASE_S, RECONNECT_CAP_S)
        self._inflight: dict[int, str | None] = {}  # message id -> event id (None: a state message)
        self._inflight_ids: set[str] = set()
        self._early: dict[int, object] = {}  # PUBACKs that arrived before their message id was recorded
        self._unrouted: set[str] = set()  # events the broker dropped for want of a subscriber
        self._unrouted_backoff = Backoff(RECONNECT_BASE_S, RECONNECT_CAP_S)
        self._retry_timer: threading.Timer | None = None
        self.unrouted = 0  # how often the broker answered "no matching subscribers"
        self._lock = threading.Lock()
        self._last_state: DeviceState | None = None
        self.refused: str | None = None  # set when the broker refuses our credentials
        self.last_error: str | None = None  # why the last connection attempt failed
        self.acked = 0  # events acknowledged by the broker since start
        self.connects = 0

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.device_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(config.username, config.password.get_secret_value())
        client.enable_logger(logging.getLogger("edgehub.agent.paho"))  # packets at debug level; never the password
        offline = DeviceState(device_id=config.device_id, online=False, profile=config.profile)
        client.will_set(self.topics.state(config.device_id), encode(offline), qos=1, retain=True)
        host, port, tls = broker_address(config.broker_url)
        self._context = client_context(config.ca_file) if tls else None
        if self._context is not None:
            client.tls_set_context(self._context)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client, self._host, self._port = client, host, port
        self._failures = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(self._host, self._port, keepalive=self.config.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()

    def stop(self, final_state: DeviceState | None = None) -> None:
        """Say goodbye (a clean disconnect does not fire the Last Will), then disconnect.

        Events not yet acknowledged stay in the outbox for the next start."""
        if final_state is not None and self.connected.is_set():
            info = self._client.publish(self.topics.state(self.config.device_id), encode(final_state), qos=1, retain=True)
            info.wait_for_publish(timeout=5)  # its PUBACK lands in `_early`: harmless at the end
        with self._lock:
            if self._retry_timer is not None:
                self._retry_timer.cancel()  # the events stay in the outbox for the next start
                self._retry_timer = None
        self._client.disconnect()
        self._client.loop_stop()

    # -- publishing -----------------------------------------------------------------------------

    def publish_state(self, state: DeviceState) -> None:
        self._last_state = state
        self._publish(self.topics.state(self.config.device_id), encode(state), retain=True)

    def publish_event(self, event) -> None:
        """Number the event, put it in the outbox, then send it; it leaves the outbox on PUBACK."""
        topic = self.topics.events(self.config.device_id)
        payload = self.outbox.add_numbered(
            event.event_id, topic, lambda stream, seq: encode(event.model_copy(update={"stream": stream, "seq": seq})))
        self._publish(topic, payload, event_id=event.event_id)

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False, event_id: str | None = None) -> None:
        """Hand a QoS 1 message to paho and remember which event its message id carries.

        paho calls on_publish while holding its own lock, so ours is never held across
        `publish()` (that would deadlock against a PUBACK arriving meanwhile); a PUBACK that
        beats the bookkeeping waits in `_early` until the message id is known.
        """
        with self._lock:
            if event_id is not None:
                if event_id in self._inflight_ids:
                    return  # with paho already (sent by `_on_connect` meanwhile): paho re-sends it
                self._inflight_ids.add(event_id)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        early = None
        with self._lock:
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # NO_CONN is fine: paho keeps QoS 1 messages and sends them on reconnect. Anything
                # else: the event stays in the outbox and goes at the next connect.
                self._inflight_ids.discard(event_id)
            elif info.mid in self._early:
                early = self._early.pop(info.mid)
                self._inflight_ids.discard(event_id)
            else:
                self._inflight[info.mid] = event_id
        if early is not None and event_id is not None:
            self._acknowledged(event_id, early)

    def _acknowledged(self, event_id: str, reason_code) -> None:
        if reason_code.is_failure:
            # Kept in the outbox: a refusal is a broker configuration problem, not the event's.
            log.error("broker refused event %s: %s", event_id, reason_code)
        elif reason_code.value == NO_MATCHING_SUBSCRIBERS:
            self._keep_unrouted(event_id)
        else:
            self.outbox.acknowledged(event_id)  # kept a while: see Outbox
            self.acked += 1
            if self._unrouted_backoff.attempts:
                self._unrouted_backoff.reset()

    def _keep_unrouted(self, event_id: str) -> None:
        """The broker took the event but nobody subscribed: keep it and send it again later."""
        self.unrouted += 1
        with self._lock:
            self._unrouted.add(event_id)
            if self._retry_timer is not None:
                return
            delay = self._unrouted_backoff.next_delay()
            self._retry_timer = threading.Timer(delay, self._resend_unrouted)
            self._retry_timer.daemon = True
            self._retry_timer.start()
        log.warning("the broker has no subscriber for events (is the hub connected?); keeping them, "
                    "sending again in %.1fs", delay)

    def _resend_unrouted(self) -> None:
        with self._lock:
            self._retry_timer = None
            wanted, self._unrouted = self._unrouted, set()
        for event_id, topic, payload in self.outbox.pending():
            if event_id in wanted:
                self._publish(topic, payload, event_id=event_id)

    # -- callbacks (paho's network thread) --------------------------------------------------

    def _next_delay(self) -> None:
        """Give paho the next jittered delay (it waits exactly min_delay after a reset)."""
        delay = self.backoff.next_delay()
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = self.last_error = f"broker refused the connection: {reason_code}"
            log.error("%s (check username/password in the agent config)", self.last_error)
            return
        self.refused = self.last_error = None
        self._failures = 0
        self.backoff.reset()
        self.connects += 1
        self.connected.set()
        client.subscribe(self.topics.desired(self.config.device_id), qos=1)
        if self._last_state is not None:
            self.publish_state(self._last_state)
        # Events that were never acknowledged (e.g. across a reboot) go again.
        for event_id, topic, payload in self.outbox.pending():
            self._publish(topic, payload, event_id=event_id)
        log.info("connected to %s:%s (%d events waiting for acknowledgement)", self._host, self._port,
                 len(self._inflight_ids))

    def _on_connect_fail(self, client, userdata) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % _DIAGNOSE_EVERY == 0:
            self.last_error = self.diagnose()
            log.warning("cannot connect to %s:%s: %s; retrying with back-off", self._host, self._port,
                        self.last_error)
        self._next_delay()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code.value != 0:
            # The broker may have died with events it acknowledged but had not passed on or
            # saved yet: send the recent ones again after the reconnect (the hub de-duplicates).
            again = self.outbox.requeue_recent()
            log.warning("disconnected from the broker (%s); reconnecting, %d recent events will be sent again",
                        reason_code, again)
        self._next_delay()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if mid not in self._inflight:
                self._early[mid] = reason_code  # `_publish` has not recorded this mid yet
                return
            event_id = self._inflight.pop(mid)
            self._inflight_ids.discard(event_id)
        if event_id is not None:
            self._acknowledged(event_id, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        try:
            desired = parse_body(message.payload, DesiredState, device=self.config.device_id)
        except MessageError as exc:
            log.warning("ignored desired state on %s: %s", message.topic, exc)
            return
        self.on_desired(desired)

    # -- diagnosis ----------------------------------------------------------------------------

    def diagnose(self, timeout: float = 5.0) -> str:
        """Why a connection fails: the TCP or TLS error, probed directly (paho does not say)."""
        try:
            with socket.create_connection((self._host, self._port), timeout=timeout) as sock:
                if self._context is None:
                    return "the broker accepted TCP but the MQTT handshake failed"
                with self._context.wrap_socket(sock, server_hostname=self._host):
                    return "the TLS handshake succeeds; the MQTT handshake failed"
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                return describe(exc)
            return f"{exc.__class__.__name__}: {exc.strerror or exc}"
