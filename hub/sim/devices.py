"""Simulated devices: many paho clients on one epoll loop per process (`edgehub fleet simulate`).

Each simulated device speaks the real protocol through the real broker with its own
credentials: a retained state with a Last Will, a persistent MQTT 5 session, the desired state it
is sent (manifest signatures checked with the hub's key), QoS 1 events. It does not download or
run models: its benchmark numbers come from the declared synthetic distribution
(hub/sim/run.py, `SyntheticDistribution`) and say so: runtime "simulated" in every report and
in the device's runtimes. paho's network calls (loop_read / loop_write / loop_misc) are driven
by one selector per process, as NOTES.md measured (5,000 clients in ~46 MB).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import selectors
import signal
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.agent.backoff import Backoff
from edgehub.agent.mqtt_link import NO_MATCHING_SUBSCRIBERS
from edgehub.hub.sim.model import DeviceSpec, ProcessSpec, SyntheticDistribution
from edgehub.protocol.base import MessageError
from edgehub.protocol.manifest import SignatureError, verify_manifest
from edgehub.protocol.messages import ActivationResult, BenchmarkReport, DesiredState, DeviceState, FieldTelemetry
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode, parse_body

log = logging.getLogger("edgehub.hub.simulate")

CONNECT_WAVE = 100  # connects per loop turn, so the broker's accept backlog never overflows
SESSION_EXPIRY_S = 24 * 3600


class SimDevice:
    def __init__(self, spec: DeviceSpec, proc: SimProcess):
        self.spec, self.proc, self.id = spec, proc, spec.id
        self.active: str | None = None
        self.previous: str | None = None
        self.generation_seen = 0
        self.reported: dict[str, str] = {}  # variant -> sha256 benchmarked
        self.measured: dict[str, tuple[str, int]] = {}  # variant -> (precision, size): to measure again
        self.stream, self.seq = uuid.uuid4().hex[:16], 0  # a new stream per run: nothing is kept on disk
        self.connected = False
        self.ever_connected = False
        self.next_reconnect = 0.0
        topics = proc.topics
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec.id, protocol=mqtt.MQTTv5)
        client.username_pw_set(spec.id, spec.password)
        client.will_set(topics.state(spec.id), encode(DeviceState(device_id=spec.id, online=False,
                                                                   profile=spec.profile)), qos=1, retain=True)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = proc.on_socket_open
        client.on_socket_close = proc.on_socket_close
        client.on_socket_register_write = proc.on_register_write
        client.on_socket_unregister_write = proc.on_unregister_write
        client.user_data_set(self)
        self.client = client
        self.events_out: dict[int, bytes] = {}  # mid -> event body, until the broker acknowledges it
        # As the agent does (agent/mqtt_link.py): an event the broker took with "no matching
        # subscribers" (after a broker restart, before the hub has subscribed again) is sent again.
        self.unrouted_backoff = Backoff(base_s=0.5, cap_s=30.0)
        self.telemetry = None  # the desired state's TelemetrySettings
        self.telemetry_scheduled = False

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(self.proc.host, self.proc.port, keepalive=60, clean_start=self.spec.fresh_session
                                and not self.ever_connected, properties=props, bind_address=self.spec.source_address or "")
        except OSError as exc:
            self.proc.stats["connect_errors"] += 1
            self.next_reconnect = time.monotonic() + 2.0
            log.debug("connect of %s failed: %s", self.id, exc)

    def state(self, online: bool = True) -> DeviceState:
        d = self.proc.distribution
        return DeviceState(device_id=self.id, online=online, profile=self.spec.profile, agent_version=d.agent_version,
                           runtimes={"simulated": d.agent_version}, hardware=d.hardware_of(self.id),
                           active_variant=self.active, previous_variant=self.previous,
                           cached_variants=sorted(self.reported), generation_seen=self.generation_seen)

    # -- paho callbacks ---------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.proc.stats["refused"] += 1
            self.next_reconnect = time.monotonic() + 5.0
            return
        first = not self.ever_connected
        self.connected = self.ever_connected = True
        self.proc.stats["connected"] += 1
        if first:
            self.proc.stats["connected_once"] += 1
        client.subscribe(self.proc.topics.desired(self.id), qos=1)
        self.publish_state()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected:
            self.proc.stats["connected"] -= 1
        self.connected = False
        self.next_reconnect = time.monotonic() + 1.0 + (hash(self.id) % 1000) / 1000

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        body = self.events_out.pop(mid, None)
        if body is None:
            return
        if reason_code.is_failure:
            self.proc.stats["events_refused"] += 1
        elif reason_code.value == NO_MATCHING_SUBSCRIBERS:
            self.proc.stats["events_unrouted"] += 1
            self.proc.schedule(self.unrouted_backoff.next_delay(), self._publish_event, body)
        else:
            self.proc.stats["events_acked"] += 1
            self.unrouted_backoff.reset()

    def _on_message(self, client, userdata, message) -> None:
        try:
            desired = parse_body(message.payload, DesiredState, device=self.id)
        except MessageError as exc:
            self.proc.stats["bad_desired"] += 1
            log.warning("%s ignored a desired state: %s", self.id, exc)
            return
        self.proc.stats["desired_received"] += 1
        if desired.generation < self.generation_seen:
            return
        self.proc.schedule(0.0, self.reconcile, desired)

    # -- behaviour --------------------------------------------------------------------------------

    def publish_state(self) -> None:
        self.client.publish(self.proc.topics.state(self.id), encode(self.state()), qos=1, retain=True)
        self.proc.stats["states_sent"] += 1

    def send_event(self, event) -> None:
        self.seq += 1  # numbered like the agent's outbox: the hub counts what it got (messages.Sequenced)
        event = event.model_copy(update={"stream": self.stream, "seq": self.seq})
        self._publish_event(encode(event))
        self.proc.stats["events_sent"] += 1

    def _publish_event(self, body: bytes) -> None:
        info = self.client.publish(self.proc.topics.events(self.id), body, qos=1)
        self.events_out[info.mid] = body

    def reconcile(self, desired: DesiredState) -> None:
        """Benchmark (synthetically) what is new, one candidate per `bench_delay_s`, then activate."""
        if desired.generation < self.generation_seen:
            return
        self.generation_seen = desired.generation
        d = self.proc.distribution
        self.telemetry = desired.telemetry
        if self.telemetry is not None and d.field_requests_per_min and not self.telemetry_scheduled:
            self.telemetry_scheduled = True
            self.proc.schedule(self.telemetry.interval_s, self._telemetry_tick, time.time())
        todo = [c for c in desired.candidates if self.reported.get(c.variant_id) != c.sha256]
        if todo:
            c = todo[0]
            self.reported[c.variant_id] = c.sha256
            self.measured[c.variant_id] = (c.precision, c.size_bytes)
            self.send_event(self._report(desired, c))
            self.proc.stats["reports_sent"] += 1
            self.proc.schedule(d.bench_delay_s, self.reconcile, desired)
            return
        if desired.activate and desired.activate != self.active:
            ok = not d.activation_fails(self.id, desired.activate)
            event = dict(event_id=uuid.uuid4().hex, device_id=self.id, generation=desired.generation,
                         variant_id=desired.activate)
            if ok:
                self.previous, self.active = self.active, desired.activate
                self.send_event(ActivationResult(ok=True, **event))
                self.proc.stats["activations"] += 1
            else:
                self.send_event(ActivationResult(ok=False, rolled_back_to=self.active,
                                                 error="simulated health check failure", **event))
                self.proc.stats["activation_failures"] += 1
        self.publish_state()

    def _report(self, desired: DesiredState, c) -> BenchmarkReport:
        base = dict(event_id=uuid.uuid4().hex, device_id=self.id, generation=desired.generation,
                    variant_id=c.variant_id, runtime="simulated", runtime_version=self.proc.distribution.agent_version)
        try:
            verify_manifest(c.manifest, self.proc.public_key)
        except SignatureError as exc:
            return BenchmarkReport(ok=False, error=f"rejected: {exc}", **base)
        return self.proc.distribution.measure(self.id, c.variant_id, c.precision, c.size_bytes, base)

    def _telemetry_tick(self, started: float) -> None:
        """An interval of synthetic real requests on the active variant, as the agent reports them."""
        settings, now = self.telemetry, time.time()
        if settings is None or not settings.enabled or self.proc.stopping:
            self.telemetry_scheduled = False
            return
        self.proc.schedule(settings.interval_s, self._telemetry_tick, now)
        if not self.active or not self.connected:
            return
        precision = self.measured.get(self.active, ("fp32", 0))[0]
        stats = self.proc.distribution.field_stats(self.id, self.active, precision, now - started, settings.reference)
        if stats is None:
            return
        self.send_event(FieldTelemetry(event_id=uuid.uuid4().hex, device_id=self.id, generation=self.generation_seen,
                                       variant_id=self.active, start=datetime.fromtimestamp(started, timezone.utc),
                                       end=datetime.fromtimestamp(now, timezone.utc), stats=stats))
        self.proc.stats["telemetry_sent"] += 1

    def flood(self, count: int) -> None:
        """Benchmark a measured variant again, `count` times (fresh event ids, the same numbers, as
        a stable device measures): load on the hub's ingest that changes no decision."""
        variant = next(iter(sorted(self.measured)), None)
        if variant is None:
            return
        d = self.proc.distribution
        precision, size = self.measured[variant]
        for _ in range(count):
            base = dict(event_id=uuid.uuid4().hex, device_id=self.id, generation=self.generation_seen,
                        variant_id=variant, runtime="simulated", runtime_version=d.agent_version)
            self.send_event(d.measure(self.id, variant, precision, size, base))


class SimProcess:
    """The devices of one process and the selector that drives their sockets."""

    def __init__(self, spec: ProcessSpec):
        self.spec = spec
        self.host, self.port = spec.host, spec.port
        self.topics = Topics(spec.fleet)
        self.public_key = base64.b64decode(spec.hub_public_key)
        self.distribution: SyntheticDistribution = spec.distribution
        self.selector = selectors.DefaultSelector()
        self.stats: dict[str, Any] = {k: 0 for k in (
            "connected", "connected_once", "refused", "connect_errors", "states_sent", "desired_received",
            "bad_desired", "reports_sent", "events_sent", "events_acked", "events_refused", "events_unrouted", "activations",
            "activation_failures", "telemetry_sent")}
        self.stats["devices"] = len(spec.devices)
        self._timers: list = []
        self._seq = itertools.count()
        self.devices = [SimDevice(d, self) for d in spec.devices]
        self._to_connect = list(self.devices)
        self.stopping = False

    # socket bookkeeping (paho calls these)
    def on_socket_open(self, client, device, sock) -> None:
        self.selector.register(sock, selectors.EVENT_READ, device)

    def on_socket_close(self, client, device, sock) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def on_register_write(self, client, device, sock) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, device)
        except (KeyError, ValueError):
            pass

    def on_unregister_write(self, client, device, sock) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ, device)
        except (KeyError, ValueError):
            pass

    def schedule(self, delay: float, fn, *args) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn, args))

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(self._timers)
            fn(*args)

    def turn(self, timeout: float) -> None:
        """One turn of the loop: connects, socket I/O, timers."""
        for _ in range(0 if self.stopping else min(CONNECT_WAVE, len(self._to_connect))):
            self._to_connect.pop().connect()
        wait = 0.0 if self._to_connect and not self.stopping else timeout
        if self._timers:
            wait = max(0.0, min(wait, self._timers[0][0] - time.monotonic()))
        for key, mask in self.selector.select(wait):
            device: SimDevice = key.data
            if mask & selectors.EVENT_READ:
                device.client.loop_read()
            if mask & selectors.EVENT_WRITE:
                device.client.loop_write()
        self._run_timers(time.monotonic())

    def housekeeping(self) -> None:
        """Keepalives, retries, and reconnects (every second or so)."""
        now = time.monotonic()
        for device in self.devices:
            device.client.loop_misc()
            if not device.connected and device.ever_connected and not self.stopping and now >= device.next_reconnect:
                device.next_reconnect = now + 5.0
                try:
                    device.client.reconnect()
                except OSError:
                    self.stats["connect_errors"] += 1

    def goodbye(self, timeout: float = 10.0) -> None:
        """Publish offline states (as the agent does), wait for them, disconnect."""
        self.stopping = True
        infos = [d.client.publish(self.topics.state(d.id), encode(d.state(online=False)), qos=1, retain=True)
                 for d in self.devices if d.connected]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(i.is_published() for i in infos):
            self.turn(0.05)
        for d in self.devices:
            if d.connected:
                d.client.disconnect()
        for _ in range(20):
            self.turn(0.01)


def process_main(spec: ProcessSpec, conn) -> None:
    """Entry point of one simulation process: run until told to stop over `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(level=logging.WARNING)
    proc = SimProcess(spec)
    next_misc = next_report = time.monotonic()
    try:
        while True:
            proc.turn(0.05)
            now = time.monotonic()
            if now >= next_misc:
                proc.housekeeping()
                next_misc = now + 1.0
            if now >= next_report:
                conn.send(("stats", dict(proc.stats, pending_timers=len(proc._timers))))
                next_report = now + 0.5
            if conn.poll():
                command, arg = conn.recv()
                if command == "stop":
                    break
                if command == "flood":
                    for device in proc.devices:
                        device.flood(arg)
    finally:
        proc.goodbye()
        conn.send(("stats", dict(proc.stats, pending_timers=len(proc._timers))))
        conn.send(("stopped", None))
