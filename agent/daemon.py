"""The agent daemon: MQTT link + reconcile loop + local serving, until told to stop."""

from __future__ import annotations

import logging
import queue
import signal
import threading
from importlib.metadata import PackageNotFoundError, version

from edgehub.agent.config import AgentConfig
from edgehub.agent.hardware import hardware
from edgehub.agent.load import RequestRates
from edgehub.agent.local_state import CorruptState, SlotRecord, StateFile
from edgehub.agent.mqtt_link import MqttLink
from edgehub.agent.outbox import Outbox
from edgehub.agent.reconciler import Reconciler
from edgehub.agent.runtimes import available_runtimes
from edgehub.agent.serving import LocalServer, ModelShelf
from edgehub.agent.telemetry import FieldRecorder, TelemetryQueue, telemetry_loop
from edgehub.protocol.messages import DesiredState, DeviceState, SlotState
from edgehub.protocol.telemetry import TelemetrySettings

log = logging.getLogger("edgehub.agent")

RETRY_S = 15.0  # how soon an incomplete reconcile (e.g. a failed download) is tried again
DEFAULT_TELEMETRY_S = 60.0  # until a desired state says otherwise


def agent_version() -> str:
    try:
        return version("edgehub")
    except PackageNotFoundError:
        return "0+unknown"


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.stopping = threading.Event()
        # SimpleQueue: put() is reentrant, so the SIGTERM handler may call stop() at any moment.
        self._desired: queue.SimpleQueue[DesiredState | None] = queue.SimpleQueue()  # None: wake up to stop
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = StateFile(config.data_dir / "state.json")
        try:
            store.load()
        except CorruptState as exc:
            log.error("%s", exc)
        self.outbox = Outbox(config.data_dir / "outbox.db")
        self.link = MqttLink(config, self.outbox, self._desired.put)
        self.rates = RequestRates()
        self.reconciler = Reconciler(config, store, self.link.publish_event, load_rpm=self.rates.others_per_minute)
        # Field telemetry: what real requests did, per interval (settings from the desired state).
        self.telemetry: TelemetrySettings | None = None
        self.recorder = FieldRecorder()
        self.telemetry_queue = TelemetryQueue(config.data_dir / "telemetry.db")
        shelf = ModelShelf(lambda: self.reconciler.state.active_variants(),
                           lambda slot: (self.reconciler.state.slots.get(slot) or SlotRecord()).settings)
        self.server = LocalServer(shelf, config.serve_host,
                                  config.serve_port, recorder=self.recorder, rates=self.rates)
        self._runtimes = available_runtimes()
        self.reconciler.runtimes = self._runtimes  # judged against each candidate's requirements
        self._hardware = hardware()

    def device_state(self, online: bool = True) -> DeviceState:
        s = self.reconciler.state
        names = sorted(s.slots)
        first = s.slots[names[0]] if names else None
        v2 = dict(schema_version=2, slots=[
            SlotState(model=m, active_variant=r.active.variant_id if r.active else None,
                      previous_variant=r.previous.variant_id if r.previous else None,
                      requests_per_min=self.rates.per_minute(m), settings=r.settings)
            for m, r in sorted(s.slots.items())],
        ) if self.config.protocol >= 2 else {}
        return DeviceState(
            device_id=self.config.device_id, online=online, profile=self.config.profile,
            agent_version=agent_version(), runtimes=self._runtimes, hardware=self._hardware,
            active_variant=first.active.variant_id if first and first.active else None,
            previous_variant=first.previous.variant_id if first and first.previous else None,
            cached_variants=self.reconciler.cached_variants(), generation_seen=s.generation_seen, **v2,
        )

    def _newest(self, current: DesiredState | None, timeout: float) -> DesiredState | None:
        """Wait for desired states; keep only the newest generation (level-triggered)."""
        try:
            item = self._desired.get(timeout=timeout)
        except queue.Empty:
            return current
        while True:
            if item is not None and (current is None or item.generation >= current.generation):
                current = item
            try:
                item = self._desired.get_nowait()
            except queue.Empty:
                return current

    def _telemetry_interval(self) -> float:
        return self.telemetry.interval_s if self.telemetry is not None else DEFAULT_TELEMETRY_S

    def _start_telemetry(self) -> threading.Thread:
        thread = threading.Thread(target=telemetry_loop, name="edgehub-telemetry", daemon=True, kwargs=dict(
            recorder=self.recorder, queue=self.telemetry_queue, device_id=self.config.device_id,
            generation=lambda: self.reconciler.state.generation_seen, interval_s=self._telemetry_interval,
            connected=self.link.connected, publish=self.link.publish_event, stopping=self.stopping))
        thread.start()
        return thread

    def _configure_telemetry(self, desired: DesiredState) -> None:
        per_slot = {s.model: s.telemetry for s in desired.model_slots() if s.telemetry and s.telemetry.enabled}
        self.telemetry = next(iter(per_slot.values()), None)  # one interval for the device
        self.recorder.configure(self.telemetry.reference if self.telemetry else None, enabled=self.telemetry is not None,
                                slots={m: t.reference for m, t in per_slot.items()})

    def _understood(self, desired: DesiredState) -> bool:
        if self.config.protocol < 2 and desired.schema_version > 1:
            # What a one-model agent of the previous release does with a body it cannot read.
            log.error("desired state of schema version %d ignored: this agent speaks version 1", desired.schema_version)
            return False
        return True

    def run(self) -> None:
        self.server.start()
        telemetry = self._start_telemetry()
        log.info("serving the active models on http://%s:%d/predict/<model>", self.config.serve_host,
                 self.server.port)
        self.link.publish_state(self.device_state())
        self.link.start()
        desired: DesiredState | None = None
        done_generation = -1
        try:
            while not self.stopping.is_set():
                incomplete = desired is not None and done_generation != desired.generation
                newest = self._newest(desired, timeout=RETRY_S if incomplete else 1.0)
                if newest is None or self.stopping.is_set():
                    continue
                if newest is desired and done_generation == desired.generation:
                    continue
                if not self._understood(newest):
                    continue
                desired = newest
                self._configure_telemetry(desired)
                if self.reconciler.reconcile(desired):
                    done_generation = desired.generation
                self.link.publish_state(self.device_state())
        finally:
            self.stopping.set()
            telemetry.join(timeout=5)
            self.link.stop(final_state=self.device_state(online=False))
            self.server.stop()
            self.telemetry_queue.close()
            self.outbox.close()

    def stop(self) -> None:
        self.stopping.set()
        self._desired.put(None)  # the loop may be waiting minutes for a retry: wake it now


def run_forever(config: AgentConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    agent = Agent(config)

    def _stop(signum, frame) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run()
