"""The hub's fleet loop: MQTT in (device state, events), desired states out.

One worker thread owns all database work. paho's network thread only queues messages; the
worker drains the queue in batches (one transaction per batch of events), then reconciles the
devices those messages touched, and every `tick_s` reconciles all devices (new deployments).

Device state is read with a plain subscription, because brokers do not deliver retained
messages on MQTT 5 shared subscriptions; events use `$share/edgehub/...` so several hub workers
can split them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.agent.messages import (
    BenchmarkSettings, Candidate, DeviceState, HubState, MessageError, Topics, encode,
    parse_body, parse_event,
)
from edgehub.agent.mqtt_link import broker_address
from edgehub.hub.fleet_planner import next_desired
from edgehub.hub.selection import CandidateFacts, Policy, select_variant
from edgehub.hub.url_signing import sign_artifact_url
from edgehub.zoo.fleet import DeviceRecord, FleetStore, SelectionRecord
from edgehub.zoo.profiles import Profile
from edgehub.zoo.records import VariantRecord, utcnow
from edgehub.zoo.registry import Registry

log = logging.getLogger("edgehub.hub.fleet")

SHARE_GROUP = "edgehub"
BATCH_MAX = 500
URL_TTL_S = 7 * 24 * 3600  # desired states are retained: their URLs must outlive a device's nap


@dataclass
class FleetSettings:
    fleet: str
    broker_url: str
    username: str
    password: str
    artifact_base_url: str
    url_secret: bytes
    policy: Policy
    benchmark: BenchmarkSettings
    client_id: str = "edgehub-hub"
    tick_s: float = 1.0
    version: str = "0"
    public_key_b64: str | None = None


class FleetService:
    def __init__(self, settings: FleetSettings, registry: Registry, fleet: FleetStore,
                 profiles: dict[str, Profile]):
        self.settings = settings
        self.registry = registry
        self.fleet = fleet
        self.profiles = profiles
        self.topics = Topics(settings.fleet)
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self.connected = threading.Event()
        # Set on every (re)connect: the worker re-publishes every stored desired state, so a
        # broker that lost its retained messages, or a publish lost while offline, heals.
        self._republish = threading.Event()
        self.stats = {"events_stored": 0, "events_duplicate": 0, "rejected": 0, "desired_published": 0}
        self._worker = threading.Thread(target=self._run, name="edgehub-fleet", daemon=True)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(settings.username, settings.password)
        client.will_set(self.topics.hub_state, encode(HubState(online=False, version=settings.version)), qos=1,
                        retain=True)
        client.reconnect_delay_set(1, 10)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *args: self.connected.clear()
        client.on_message = lambda c, u, m: self._inbox.put((m.topic, m.payload))
        self._client = client

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        host, port, tls = broker_address(self.settings.broker_url)
        if tls:
            self._client.tls_set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7 * 24 * 3600  # events queued while the hub is down wait for it
        self._client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self._client.loop_start()
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._worker.join(timeout=10)
        if self.connected.is_set():
            self._client.publish(self.topics.hub_state, encode(HubState(online=False, version=self.settings.version)),
                                 qos=1, retain=True).wait_for_publish(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the hub: %s", reason_code)
            return
        root = self.topics.root
        client.subscribe([(f"{root}/devices/+/state", 1), (f"$share/{SHARE_GROUP}/{root}/devices/+/events", 1)])
        client.publish(self.topics.hub_state, encode(HubState(online=True, version=self.settings.version,
                                                              public_key=self.settings.public_key_b64)),
                       qos=1, retain=True)
        self.connected.set()
        self._republish.set()
        log.info("hub connected to the broker")

    # -- the worker ---------------------------------------------------------------------------

    def _drain(self, timeout: float) -> list[tuple[str, bytes]]:
        try:
            batch = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            if self._republish.is_set():
                self._republish.clear()
                self.republish_desired()
            touched = self.handle_batch(self._drain(timeout=0.2))
            now = time.monotonic()
            if now >= next_tick:
                touched = {d.id for d in self.fleet.devices()}
                next_tick = now + self.settings.tick_s
            for device_id in sorted(touched):
                try:
                    self.reconcile(device_id)
                except Exception:  # one device's bad data must not stop the fleet loop
                    log.exception("reconciling %s failed", device_id)

    def handle_batch(self, batch: list[tuple[str, bytes]]) -> set[str]:
        """Validate and store a batch of messages; return the devices it touched."""
        events, touched = [], set()
        for topic, payload in batch:
            try:
                device, kind = self.topics.device_of(topic)
                if kind == "state":
                    if not payload:
                        continue  # a retained state being cleared
                    if self.fleet.update_state(parse_body(payload, DeviceState, device=device)):
                        touched.add(device)
                    else:
                        log.warning("state from unknown device %s ignored", device)
                elif kind == "events":
                    events.append(parse_event(payload, device=device))
                    touched.add(device)
            except MessageError as exc:
                self.stats["rejected"] += 1
                log.warning("rejected message on %s: %s", topic[:120], exc)
        if events:
            new = self.fleet.record_events(events)
            self.stats["events_stored"] += new
            self.stats["events_duplicate"] += len(events) - new
        return touched

    def republish_desired(self) -> None:
        for device in self.fleet.devices():
            desired = self.fleet.desired(device.id)
            if desired is not None:
                self._client.publish(self.topics.desired(device.id), encode(desired), qos=1, retain=True)

    # -- reconcile one device ---------------------------------------------------------------------

    def _candidate(self, device_id: str, v: VariantRecord) -> Candidate:
        base, secret = self.settings.artifact_base_url, self.settings.url_secret
        refs = (sign_artifact_url(base, v.references_sha256, device_id, secret, ttl_s=URL_TTL_S)
                if v.references_sha256 else None)
        return Candidate(variant_id=v.id, url=sign_artifact_url(base, v.sha256, device_id, secret, ttl_s=URL_TTL_S),
                         references_url=refs, sha256=v.sha256, size_bytes=v.size_bytes, format=v.format,
                         precision=v.precision, manifest=v.signed_manifest)

    def _policy_for(self, device: DeviceRecord) -> Policy:
        profile = self.profiles.get(device.profile)
        if profile is not None and profile.memory_limit_mb and self.settings.policy.memory_limit_mb is None:
            return self.settings.policy.model_copy(update={"memory_limit_mb": float(profile.memory_limit_mb)})
        return self.settings.policy

    def reconcile(self, device_id: str) -> None:
        device = self.fleet.get_device(device_id)
        if device is None:
            return
        deployment = self.fleet.deployment_for(device.profile)
        if deployment is None:
            return
        variants = [v for v in self.registry.variants_for_profile(deployment[0], deployment[1], device.profile)
                    if v.signed_manifest is not None]
        current = self.fleet.desired(device_id)
        winner = None
        if current is not None and (current.model, current.version) == deployment:
            winner = self._select(device, deployment, variants)
        candidates = [self._candidate(device_id, v) for v in variants]
        desired = next_desired(device_id, current, deployment, candidates, winner, self.settings.benchmark)
        if desired is not None:
            self.fleet.set_desired(desired)
            self._client.publish(self.topics.desired(device_id), encode(desired), qos=1, retain=True)
            self.stats["desired_published"] += 1
            log.info("desired state of %s: generation %d (%d candidates, activate %s)", device_id,
                     desired.generation, len(desired.candidates), desired.activate)

    def _select(self, device: DeviceRecord, deployment: tuple[str, int], variants: list[VariantRecord]) -> str | None:
        reports = self.fleet.reports(device.id, [v.id for v in variants])
        if not variants or len(reports) < len(variants):
            return None  # wait until every candidate has a report
        facts = [CandidateFacts(variant_id=v.id, size_bytes=v.size_bytes, accuracy=v.metrics.get("accuracy"),
                                agreement=v.metrics.get("agreement")) for v in variants]
        roots = [v for v in variants if v.parent is None]
        reference = roots[0].metrics.get("accuracy") if roots else None
        selection = select_variant(facts, reports, self._policy_for(device), reference_accuracy=reference)
        previous = self.fleet.selection(device.id)
        if previous is None or previous.winner != selection.winner or previous.explanation != selection.explain():
            self.fleet.save_selection(SelectionRecord(device_id=device.id, model=deployment[0], version=deployment[1],
                                                      winner=selection.winner, explanation=selection.explain(),
                                                      decided_at=utcnow()))
        return selection.winner
