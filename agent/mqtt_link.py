"""The agent's MQTT connection: state (retained, Last Will), events (via the outbox), desired.

paho-mqtt runs the network loop in its own thread and reconnects with exponential backoff;
this class turns its callbacks into: "newest desired state" for the daemon, and PUBACKs that
clear the outbox.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from typing import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.agent.config import AgentConfig
from edgehub.agent.messages import DesiredState, DeviceState, MessageError, Topics, encode, parse_body
from edgehub.agent.outbox import Outbox

log = logging.getLogger("edgehub.agent.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our subscription and queued desired states


def broker_address(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


class MqttLink:
    def __init__(self, config: AgentConfig, outbox: Outbox, on_desired: Callable[[DesiredState], None]):
        self.config = config
        self.topics = Topics(config.fleet)
        self.outbox = outbox
        self.on_desired = on_desired
        self.connected = threading.Event()
        self._inflight: dict[int, str] = {}  # message id -> event id
        self._lock = threading.Lock()
        self._last_state: DeviceState | None = None
        self.refused: str | None = None  # set when the broker refuses our credentials

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.device_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(config.username, config.password.get_secret_value())
        offline = DeviceState(device_id=config.device_id, online=False, profile=config.profile)
        client.will_set(self.topics.state(config.device_id), encode(offline), qos=1, retain=True)
        # Jittered backoff between reconnects so a fleet does not reconnect in lockstep.
        client.reconnect_delay_set(min_delay=1, max_delay=30 + random.randint(0, 30))
        host, port, tls = broker_address(config.broker_url)
        if tls:
            client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client, self._host, self._port = client, host, port

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(self._host, self._port, keepalive=self.config.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()

    def stop(self, final_state: DeviceState | None = None) -> None:
        """Say goodbye (a clean disconnect does not fire the Last Will), then disconnect."""
        if final_state is not None and self.connected.is_set():
            info = self._client.publish(self.topics.state(self.config.device_id), encode(final_state), qos=1, retain=True)
            info.wait_for_publish(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()

    # -- publishing -----------------------------------------------------------------------------

    def publish_state(self, state: DeviceState) -> None:
        self._last_state = state
        self._client.publish(self.topics.state(self.config.device_id), encode(state), qos=1, retain=True)

    def publish_event(self, event) -> None:
        """Put the event in the outbox, then send it; it leaves the outbox on PUBACK."""
        payload = encode(event)
        topic = self.topics.events(self.config.device_id)
        self.outbox.add(event.event_id, topic, payload)
        self._send(event.event_id, topic, payload)

    def _send(self, event_id: str, topic: str, payload: bytes) -> None:
        with self._lock:
            info = self._client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN:
                self._inflight[info.mid] = event_id

    # -- callbacks (paho's network thread) --------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("broker refused the connection: %s", reason_code)
            return
        self.refused = None
        self.connected.set()
        client.subscribe(self.topics.desired(self.config.device_id), qos=1)
        if self._last_state is not None:
            self.publish_state(self._last_state)
        # Events that were never acknowledged (e.g. across a reboot) go again.
        with self._lock:
            queued = set(self._inflight.values())
        for event_id, topic, payload in self.outbox.pending():
            if event_id not in queued:
                self._send(event_id, topic, payload)
        log.info("connected to %s:%s", self._host, self._port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code.value != 0:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            event_id = self._inflight.pop(mid, None)
        if event_id is None:
            return
        if reason_code.is_failure:
            log.error("broker refused event %s: %s", event_id, reason_code)
        else:
            self.outbox.remove(event_id)

    def _on_message(self, client, userdata, message) -> None:
        try:
            desired = parse_body(message.payload, DesiredState, device=self.config.device_id)
        except MessageError as exc:
            log.warning("ignored desired state on %s: %s", message.topic, exc)
            return
        self.on_desired(desired)
