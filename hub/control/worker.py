"""The hub's fleet loop: MQTT in (device state, events), desired states out.

One worker thread owns all database work. paho's network thread only queues messages; the
worker drains the queue in batches: one transaction stores a batch's states, events, newest
benchmark results and rollout outcomes, and only then are the batch's messages acknowledged to
the broker (hub/control/inbox.py: a hub killed mid-batch loses nothing, the broker sends them again);
then the devices the batch touched are reconciled together
(hub/control/reconcile.py: a fixed number of queries per 500 devices). Nothing is reconciled on a
timer: every `tick_s` the worker reads the change log (deployments, aliases, tags, rollout steps,
cohort decisions written elsewhere) and reconciles only the devices those changes name. The
per-report cost therefore stays the same whatever the fleet's size.

Several workers can share a fleet (`worker_count`): events arrive on an MQTT 5 shared
subscription (`$share/<group>/...`, the group name derived from a per-hub secret that devices
never see), so the broker splits them; each device is reconciled by one
worker (a hash of its id), and a worker that stores an event of another worker's device names it
in the change log. Worker 0 also reads device states (a plain subscription: brokers do not deliver
retained messages on shared subscriptions), publishes the hub state, and steps the rollouts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError, ProgrammingError

from edgehub.agent.mqtt_link import broker_address
from edgehub.hub.broker.dynsec import shared_events_filter
from edgehub.hub.broker.tls import TlsDiagnosis, broker_tls_context
from edgehub.hub.control.cohort_plan import parse_key
from edgehub.hub.control.cohorts import cohort_key
from edgehub.hub.control.inbox import AckAfterCommitInbox
from edgehub.hub.control.reconcile import FleetReconciler
from edgehub.hub.control.settings import BATCH_MAX, ChangeFollower, FleetSettings, owner_of
from edgehub.hub.control.telemetry_limit import TelemetryLimit
from edgehub.hub.control.url_refresh import refreshed, stored_needs_refresh
from edgehub.hub.control.url_signing import sign_artifact_url
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.rollout.ops import step_rollouts
from edgehub.protocol.base import MessageError
from edgehub.protocol.messages import Candidate, DesiredState, DeviceState, HubState, now_utc
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode, parse_body, parse_event
from edgehub.zoo.profiles import Profile
from edgehub.zoo.records import VariantRecord, utcnow
from edgehub.zoo.registry import Registry

log = logging.getLogger("edgehub.hub.fleet")

# The group every edgehub hub used before it was derived from a per-hub secret: a session kept
# from then is unsubscribed from it.
LEGACY_SHARE_GROUP = "edgehub"
URL_TTL_S = 7 * 24 * 3600  # desired states are retained: their URLs must outlive a device's nap
CHANGES_KEPT_S = 3600.0
URL_REFRESH_EVERY_S = 3600.0  # well inside url_refresh.REFRESH_MARGIN_S (a day)
# The database is away, locked, or not the schema the code expects: retry, never drop data.
SYSTEMIC_DB_ERRORS = (OperationalError, ProgrammingError, InterfaceError, InternalError)


class FleetService:
    def __init__(self, settings: FleetSettings, registry: Registry, fleet: FleetStore,
                 profiles: dict[str, Profile]):
        self.settings = settings
        self.registry = registry
        self.fleet = fleet
        self.profiles = profiles
        self.topics = Topics(settings.fleet)
        self.leader = settings.worker_index == 0
        self.reconciler = FleetReconciler(registry, fleet, profiles, settings.policy, settings.benchmark,
                                          settings.cohorts, self._candidate,
                                          telemetry_interval_s=settings.telemetry_interval_s,
                                          tune_budget_s=settings.tune_budget_s)
        self._stop = threading.Event()
        self.connected = threading.Event()
        # Set on every (re)connect: the worker re-publishes every stored desired state, so a
        # broker that lost its retained messages, or a publish lost while offline, heals.
        self._republish = threading.Event()
        self._changes = ChangeFollower()
        self.stats = {"events_stored": 0, "events_duplicate": 0, "rejected": 0, "desired_published": 0,
                      "batches": 0, "messages": 0, "reconciled": 0, "ingest_s": 0.0, "reconcile_s": 0.0,
                      "rollout_steps": 0, "rollout_step_s": 0.0, "rollout_step_max_s": 0.0}
        self.started = threading.Event()  # the start-up reconcile of every device is done
        # observer(what, value): timings and counts for /metrics (hub/api/metrics.py); None: not watched.
        self.observer: Callable[[str, float], None] | None = None
        self._telemetry_limit = TelemetryLimit.for_interval(settings.telemetry_interval_s or 60.0)
        self._limited_logged: dict[str, float] = {}
        self._worker = threading.Thread(target=self._run, name=f"edgehub-fleet-{settings.worker_index}", daemon=True)
        # Messages are acknowledged to the broker only once stored (hub/control/inbox.py): a hub
        # killed mid-batch gets them again from its persistent session.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.username_pw_set(settings.username, settings.password)
        if self.leader:
            client.will_set(self.topics.hub_state, encode(HubState(online=False, version=settings.version)), qos=1,
                            retain=True)
        client.reconnect_delay_set(1, 10)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = lambda *args: self.connected.clear()
        self._inbox = AckAfterCommitInbox(client)
        client.on_message = self._inbox.on_message
        self._client = client

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        host, port, tls = broker_address(self.settings.broker_url)
        if tls:
            context = broker_tls_context(self.settings.broker_ca)
            self._client.tls_set_context(context)
            # paho retries a failed TLS handshake silently: the diagnosis logs why.
            self._client.on_connect_fail = TlsDiagnosis(host, port, context, self.settings.broker_ca,
                                                        f"hub worker {self.settings.worker_index}").on_connect_fail
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7 * 24 * 3600  # events queued while the hub is down wait for it
        # Unacknowledged messages the broker may send at once (above its max_inflight_messages for
        # MQTT 5 clients): a whole batch can wait for its commit.
        if self.settings.receive_maximum:
            props.ReceiveMaximum = self.settings.receive_maximum
        self._client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self._client.loop_start()
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._worker.join(timeout=30)
        if self.connected.is_set() and self.leader:
            self._client.publish(self.topics.hub_state, encode(HubState(online=False, version=self.settings.version)),
                                 qos=1, retain=True).wait_for_publish(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the hub: %s", reason_code)
            return
        root = self.topics.root
        # Retain As Published: an event is never retained; one that is (a device's mistake or
        # attack) is seen as such, removed from the broker and rejected (see _drop_retained).
        topics = [(shared_events_filter(self.topics, self.settings.share_group),
                   SubscribeOptions(qos=1, retainAsPublished=True))]
        if self.leader:
            # Retained states only when the subscription is new: a hub that reconnects to the session
            # it kept would otherwise get every device's retained state again (10,000 messages).
            topics.append((f"{root}/devices/+/state",
                           SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)))
            client.publish(self.topics.hub_state, encode(HubState(online=True, version=self.settings.version,
                                                                  public_key=self.settings.public_key_b64)),
                           qos=1, retain=True)
        client.subscribe(topics)
        if self.settings.share_group != LEGACY_SHARE_GROUP:
            client.unsubscribe(shared_events_filter(self.topics, LEGACY_SHARE_GROUP))
        self.connected.set()
        self._republish.set()
        log.info("hub worker %d connected to the broker", self.settings.worker_index)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:  # the broker does not give the hub its rights: nothing would arrive
            log.error("broker refused a subscription of hub worker %d: %s", self.settings.worker_index,
                      ", ".join(refused))
            self.stats["subscriptions_refused"] = self.stats.get("subscriptions_refused", 0) + len(refused)

    def owns(self, device_id: str) -> bool:
        return owner_of(device_id, self.settings.worker_count) == self.settings.worker_index

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        dirty: set[str] | None = None  # None: the start-up sweep has not run yet
        next_tick, next_prune, next_refresh, failures = 0.0, time.monotonic() + 60, 0.0, 0
        while not self._stop.is_set():
            try:
                if dirty is None:
                    self._changes.cursor = self.fleet.last_change_id()
                    dirty = {d for d in self.fleet.device_ids() if self.owns(d)}  # whatever happened while down
                if time.monotonic() >= next_refresh:  # at start-up, then hourly
                    self.refresh_urls()
                    next_refresh = time.monotonic() + URL_REFRESH_EVERY_S
                if self._republish.is_set():
                    self._republish.clear()
                    self.republish_desired()
                batch = self._inbox.drain(timeout=0.1, limit=BATCH_MAX)
                try:
                    dirty |= self._store([(m.topic, m.payload) for m in self._drop_retained(batch)])
                except Exception:
                    self._inbox.retry_later(batch)  # unacknowledged: tried again next turn
                    raise
                self._inbox.ack(batch)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.settings.tick_s
                    dirty |= self.follow_changes()
                    if self.leader:
                        self._step_rollouts()
                        if now >= next_prune:
                            next_prune = now + 60
                            self.fleet.prune_changes(utcnow() - timedelta(seconds=CHANGES_KEPT_S))
                            self._check_missing()
                            self.fleet.downsample_telemetry()  # raw for a day, hourly for 30
                self._reconcile(dirty)
                dirty = set()
                self.started.set()
                failures = 0
                self.stats["worker_cpu_s"] = time.thread_time()  # this thread only (not paho's)
            except Exception:  # a database hiccup must not end the fleet loop: what failed is retried
                failures += 1
                self.stats["loop_failures"] = self.stats.get("loop_failures", 0) + 1
                log.exception("fleet loop iteration failed (%d in a row); retrying", failures)
                time.sleep(min(5.0, 0.5 * failures))

    def _drop_retained(self, batch: list) -> list:
        """The batch without retained events. A retained event would be handed to every new plain
        subscriber of the topic for ever; it is cleared from the broker and rejected."""
        kept = []
        for message in batch:
            if message.retain and message.payload and message.topic.endswith("/events"):
                self.stats["rejected"] += 1
                log.warning("rejected a retained event on %s (events are never retained); cleared it",
                            message.topic[:120])
                self._client.publish(message.topic, b"", qos=1, retain=True)
            else:
                kept.append(message)
        return kept

    def _store(self, batch: list[tuple[str, bytes]]) -> set[str]:
        """handle_batch. A database that is away, locked or not what the code expects (SYSTEMIC)
        fails the whole batch, which is kept and tried again. Any other error is in the data: the
        messages are then stored one by one, and only one that fails on its own is dropped
        (logged, acknowledged: it would fail again), so one bad message cannot hold up the fleet."""
        try:
            return self.handle_batch(batch)
        except SYSTEMIC_DB_ERRORS:
            raise
        except Exception:
            log.exception("storing a batch of %d messages failed; storing them one by one", len(batch))
        dirty = set()
        for topic, payload in batch:
            try:
                dirty |= self.handle_batch([(topic, payload)])
            except SYSTEMIC_DB_ERRORS:
                raise
            except Exception:  # noqa: BLE001 - this message breaks its batch: drop it, keep the rest
                log.exception("dropped a message on %s that cannot be stored", topic[:120])
                self.stats["dropped"] = self.stats.get("dropped", 0) + 1
        return dirty

    def _check_missing(self) -> None:
        """Events devices numbered and the hub never stored (hub/fleet/traffic.py): a gauge in the
        stats and a warning whenever the count grows, so a loss is seen, not silent."""
        missing, devices = self.fleet.events_missing()
        if missing > self.stats.get("events_missing", 0):
            log.warning("%d event(s) from %d device(s) were sent and never stored (`edgehub fleet status` shows "
                        "which devices)", missing, devices)
        self.stats["events_missing"], self.stats["devices_missing_events"] = missing, devices

    def _step_rollouts(self) -> None:
        started = time.perf_counter()
        self.stats["rollout_steps"] += len(step_rollouts(self.fleet, registry=self.registry))
        took = time.perf_counter() - started
        self.stats["rollout_step_s"] += took
        self.stats["rollout_step_max_s"] = max(self.stats["rollout_step_max_s"], took)

    def handle_batch(self, batch: list[tuple[str, bytes]]) -> set[str]:
        """Validate and store a batch of messages in one transaction; return the devices this
        worker should reconcile (another worker's devices are named in the change log)."""
        if not batch:
            return set()
        started = time.perf_counter()
        states, events = [], []
        for topic, payload in batch:
            try:
                device, kind = self.topics.device_of(topic)
                if kind == "state":
                    if payload:  # an empty payload is a retained state being cleared
                        states.append(parse_body(payload, DeviceState, device=device))
                elif kind == "events" and payload:  # empty: the hub clearing a retained event
                    events.append(parse_event(payload, device=device))
            except MessageError as exc:
                self.stats["rejected"] += 1
                log.warning("rejected message on %s: %s", topic[:120], exc)
        events = self._limit_telemetry(events)
        # Telemetry changes no device's plan (rollouts read it in their own step): not reconciled for it.
        touched = {e.device_id for e in events if e.kind != "telemetry"}
        mine = {d for d in touched if self.owns(d)}
        result = self.fleet.ingest(states, events, cohort_of=cohort_key,
                                   outcomes=self.reconciler.outcomes_for(events), notify=sorted(touched - mine),
                                   reference_of=self.reconciler.field_reference)
        for device in result.unknown:
            log.warning("state from unknown device %s ignored", device)
        # A changed state of another worker's device is named in the log after this commit.
        foreign = {d for d in result.changed if not self.owns(d)}
        if foreign:
            self.fleet.save_plans(changes=[("device", d) for d in sorted(foreign)])
        self.stats["events_stored"] += result.new_events
        self.stats["events_duplicate"] += len(events) - result.new_events
        self.stats["batches"] += 1
        self.stats["messages"] += len(batch)
        took = time.perf_counter() - started
        self.stats["ingest_s"] += took
        if self.observer is not None:
            self.observer("ingest_s", took)
            self.observer("events", result.new_events)
            if events:
                self.observer("lag_s", (now_utc() - min(e.at for e in events)).total_seconds())
        return mine | (result.changed - foreign)

    def _limit_telemetry(self, events: list) -> list:
        """Drop the telemetry a device sends past its rate (hub/control/telemetry_limit.py), counted
        and logged once a minute per device, so one flooding device costs the others nothing."""
        now = time.monotonic()
        kept, dropped = self._telemetry_limit.admit(events, now)
        for device, n in dropped.items():
            self.stats["telemetry_limited"] = self.stats.get("telemetry_limited", 0) + n
            if now - self._limited_logged.get(device, -60.0) >= 60.0:
                self._limited_logged[device] = now
                log.warning("device %s sends field telemetry faster than allowed: %d interval(s) dropped", device, n)
        return kept

    def follow_changes(self) -> set[str]:
        """Devices named by changes made since the last look (by anyone), that this worker owns."""
        changes = self._changes.take(self.fleet)
        if not changes:
            return set()
        if any(c.kind in ("profile", "group", "rollout") for c in changes):
            self.reconciler.refresh()  # aliases and rollouts first: targets depend on them
        devices: set[str] = set()
        for c in changes:
            if c.kind == "device":
                devices.add(c.key)
            elif c.kind == "profile":
                devices.update(self.fleet.device_ids(profile=c.key))
            elif c.kind == "group":
                devices.update(self.fleet.device_ids(tag=c.key))
            elif c.kind == "cohort":
                devices.update(self.fleet.device_ids(cohort=parse_key(c.key)[0]))
            elif c.kind == "rollout":
                rollout_id, _, stage = c.key.partition(":")
                devices.update(self.fleet.rollout_member_ids(int(rollout_id), [int(stage)] if stage else None))
        return {d for d in devices if self.owns(d)}

    def _reconcile(self, device_ids: set[str] | list[str]) -> None:
        if not device_ids:
            return
        started = time.perf_counter()
        for desired in self.reconciler.reconcile(device_ids):
            self._client.publish(self.topics.desired(desired.device_id), encode(desired), qos=1, retain=True)
            self.stats["desired_published"] += 1
            log.debug("desired state of %s: generation %d (%d candidates, activate %s)", desired.device_id,
                      desired.generation, len(desired.candidates), desired.activate)
        self.stats["reconciled"] += len(device_ids)
        took = time.perf_counter() - started
        self.stats["reconcile_s"] += took
        if self.observer is not None:
            self.observer("reconcile_s", took)

    def reconcile(self, device_id: str) -> None:
        """Reconcile one device now (tests and tools; the loop reconciles in batches)."""
        self._reconcile([device_id])

    def republish_desired(self) -> None:
        for page in self.fleet.desired_pages():
            for body in page:
                if self.owns(body["device_id"]):
                    self._client.publish(self.topics.desired(body["device_id"]), json.dumps(body).encode(), qos=1,
                                         retain=True)

    def refresh_urls(self, now: float | None = None) -> int:
        """Re-sign the URLs of this worker's stored desired states that expire within a day
        (hub/control/url_refresh.py): same generation, stored, then published. Returns how many."""
        now = time.time() if now is None else now
        base, secret = self.settings.artifact_base_url, self.settings.url_secret
        fresh = [refreshed(DesiredState.model_validate(body), base, secret, URL_TTL_S, now)
                 for page in self.fleet.desired_pages() for body in page
                 if self.owns(body["device_id"]) and stored_needs_refresh(body, now)]
        if not fresh:
            return 0
        self.fleet.save_plans(desired=fresh)
        for desired in fresh:
            self._client.publish(self.topics.desired(desired.device_id), encode(desired), qos=1, retain=True)
        self.stats["urls_refreshed"] = self.stats.get("urls_refreshed", 0) + len(fresh)
        log.info("re-signed the artifact URLs of %d desired states before they expire", len(fresh))
        return len(fresh)

    # -- candidates ---------------------------------------------------------------------------------

    def _candidate(self, device_id: str, v: VariantRecord) -> Candidate:
        base, secret = self.settings.artifact_base_url, self.settings.url_secret
        refs = (sign_artifact_url(base, v.references_sha256, device_id, secret, ttl_s=URL_TTL_S)
                if v.references_sha256 else None)
        return Candidate(variant_id=v.id, url=sign_artifact_url(base, v.sha256, device_id, secret, ttl_s=URL_TTL_S),
                         references_url=refs, sha256=v.sha256, size_bytes=v.size_bytes, format=v.format,
                         precision=v.precision, manifest=v.signed_manifest)
