"""Retiring a hub worker when `hub serve --workers` goes down (say from 3 to 2).

A worker's MQTT session outlives its process (session expiry of a week), and with it its place in
the shared subscription: Mosquitto keeps routing its share of the events to the session while
nobody is connected (measured with Mosquitto 2.0.11: two members, one offline, 10 of 20 events
queued for the offline one). A worker index no longer in use would take that share for a week.
So `hub serve` retires it: it resumes the session (clean start off), unsubscribes at once (no new
events are routed to it), stores what was queued exactly as a worker does
(FleetService.handle_batch, one transaction per batch, acknowledged after the commit), and once
nothing has arrived for `quiet_s` disconnects with a session expiry of 0: the broker then discards
the session. If anything fails on the way the session is kept, to be retired on the next start.
"""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.agent.mqtt_link import broker_address
from edgehub.hub.broker.dynsec import shared_events_filter
from edgehub.hub.broker.tls import broker_tls_context
from edgehub.hub.control.settings import BATCH_MAX, FleetSettings
from edgehub.hub.control.worker import LEGACY_SHARE_GROUP, FleetService
from edgehub.hub.serve.workers import WorkerError


def retire_session(settings: FleetSettings, service: FleetService, *, quiet_s: float = 1.0,
                   connect_timeout_s: float = 10.0, timeout_s: float = 120.0) -> int:
    """Drain and end the session of `settings.username`; returns how many messages it held.

    `service` stores them: a FleetService that is not started, whose worker_index is at least its
    worker_count (it reconciles no device; the owners are named in the change log)."""
    if service.settings.worker_index < service.settings.worker_count:
        raise WorkerError(f"worker {service.settings.worker_index} is in use: only a retired index can be drained")
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connected, unsubscribed = threading.Event(), threading.Event()
    refused: list[str] = []
    # The session may still hold the group of an edgehub from before the per-hub group: both go.
    shared = [shared_events_filter(service.topics, g) for g in dict.fromkeys(
        (settings.share_group, LEGACY_SHARE_GROUP))]

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
            return
        connected.set()
        client.unsubscribe(shared)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5,
                         manual_ack=True)
    client.username_pw_set(settings.username, settings.password)
    client.on_connect = on_connect
    client.on_unsubscribe = lambda *args: unsubscribed.set()
    client.on_message = lambda c, u, message: inbox.put(message)
    host, port, tls = broker_address(settings.broker_url)
    if tls:
        client.tls_set_context(broker_tls_context(settings.broker_ca))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 7 * 24 * 3600  # as the worker had it: kept if the drain fails
    client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
    client.loop_start()
    end = None  # DISCONNECT properties; expiry 0 once everything is stored: the broker drops the session
    try:
        deadline = time.monotonic() + connect_timeout_s
        while not (connected.is_set() or refused) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not connected.is_set():
            raise WorkerError(f"could not retire {settings.username}: the broker "
                              f"{'refused it: ' + refused[0] if refused else 'did not answer'}")
        total = _drain(client, inbox, service, unsubscribed, quiet_s, time.monotonic() + timeout_s)
        end = Properties(PacketTypes.DISCONNECT)
        end.SessionExpiryInterval = 0
        return total
    finally:
        client.disconnect(properties=end)
        client.loop_stop()


def _drain(client: mqtt.Client, inbox: queue.Queue, service: FleetService, unsubscribed: threading.Event,
           quiet_s: float, deadline: float) -> int:
    """Store batches until the session is unsubscribed and nothing came for `quiet_s`."""
    total, last = 0, time.monotonic()
    while time.monotonic() < deadline:
        batch = []
        try:
            batch.append(inbox.get(timeout=0.1))
            while len(batch) < BATCH_MAX:
                batch.append(inbox.get_nowait())
        except queue.Empty:
            pass
        if batch:
            service.handle_batch([(m.topic, bytes(m.payload)) for m in batch])  # commits; raises if it cannot
            for m in batch:
                if m.qos > 0:
                    client.ack(m.mid, m.qos)
            total += len(batch)
            last = time.monotonic()
        elif unsubscribed.is_set() and time.monotonic() - last >= quiet_s:
            return total
    raise WorkerError(f"retiring {service.settings.username} took longer than expected; its session is kept "
                      "and retired on the next start")


__all__ = ["retire_session"]
