"""The whole loop with real parts: managed Mosquitto (auth + ACL), hub service, two agent
processes, ONNX Runtime benchmarks, selection, activation, local serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mqtt_helpers import connect, wait_for

from edgehub.agent.config import dump_config
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.hub.publish.release import deploy
from edgehub.hub.serve.enrollment import enroll_device
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.protocol.messages import BenchmarkSettings, DeviceState
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode
from edgehub.zoo.store import ArtifactStore

FAST_BENCH = BenchmarkSettings(time_budget_s=0.3, warmup_runs=2, min_runs=10, threads=1, timeout_s=60)


class Fleet:
    """A hub in-process and agent processes, torn down at the end."""

    def __init__(self, home: Path):
        self.paths = HubPaths.from_home(home)
        self.hub = HubService(self.paths, options=HubOptions(benchmark=FAST_BENCH, tick_s=0.3)).start()
        self.agents: dict[str, subprocess.Popen] = {}
        self.configs: dict[str, object] = {}

    def add_agent(self, device_id: str, profile: str = "x86-cpu") -> None:
        config = enroll_device(self.paths, device_id, profile, data_dir=self.paths.root / "agents" / device_id,
                               serve_port=0, replace=True)
        path = self.paths.root / f"{device_id}.toml"
        path.write_text(dump_config(config))
        self.configs[device_id] = config
        log = open(self.paths.root / f"{device_id}.log", "w")
        self.agents[device_id] = subprocess.Popen(
            [sys.executable, "-m", "edgehub.hub.cli", "agent", "run", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, device_id: str) -> str:
        return (self.paths.root / f"{device_id}.log").read_text()

    def device(self, device_id: str):
        return self.hub.fleet.get_device(device_id)

    def stop(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.hub.stop()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path / "home")
    yield f
    f.stop()


def settled(fleet: Fleet, device_id: str) -> bool:
    selection = fleet.hub.fleet.selection(device_id)
    device = fleet.device(device_id)
    return bool(selection and selection.winner and device.active_variant == selection.winner)


def test_publish_to_activation_on_two_agents(fleet, tiny_mlp):
    fleet.add_agent("cam-01")
    fleet.add_agent("cam-02")
    assert wait_for(lambda: all(fleet.device(d).online for d in ("cam-01", "cam-02")), timeout=30)
    state = fleet.device("cam-01").state
    assert state.runtimes.get("onnxruntime") and state.hardware.cores >= 1 and state.profile == "x86-cpu"

    outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"],
                                     profiles=["x86-cpu"]), fleet.paths, fleet.hub.registry)
    assert deploy(fleet.hub.fleet, outcome, ["x86-cpu"]) == ["x86-cpu"]
    assert wait_for(lambda: settled(fleet, "cam-01") and settled(fleet, "cam-02"), timeout=120), \
        fleet.log("cam-01")[-2000:]

    for device_id in ("cam-01", "cam-02"):
        selection = fleet.hub.fleet.selection(device_id)
        verdicts = selection.explanation["verdicts"]
        assert {v["variant_id"] for v in verdicts} == {v.id for v in outcome.variants}
        assert all(v["reason"] for v in verdicts)
        winner = next(v for v in verdicts if v["selected"])
        assert winner["p50_ms"] > 0
        reports = fleet.hub.fleet.reports(device_id, [v.id for v in outcome.variants])
        assert all(r.ok and r.agreement == 1.0 and r.latency.p50_ms <= r.latency.p99_ms for r in reports.values())
        assert fleet.device(device_id).state.previous_variant is None

    # Every event stored once; activation results arrived.
    events = fleet.hub.fleet.events("cam-01")
    assert len({e["event_id"] for e in events}) == len(events)
    assert any(e["kind"] == "activation" and e["ok"] for e in events)

    # The agent serves the active model to local applications.
    log = fleet.log("cam-01")
    port = int(log.split("/predict")[0].rsplit(":", 1)[1])
    body = json.dumps({"inputs": {"x": tiny_mlp["x"][:3].tolist()}}).encode()
    reply = json.load(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body)))
    assert reply["variant"] == fleet.device("cam-01").active_variant
    assert np.asarray(reply["outputs"]["logits"]).shape == (3, 10)


def test_bad_messages_are_rejected_and_nothing_breaks(fleet, tiny_mlp):
    """Malformed, oversized and wrong-device bodies on a device's own topics: logged, ignored."""
    fleet.add_agent("cam-01")
    assert wait_for(lambda: fleet.device("cam-01") and fleet.device("cam-01").online, timeout=30)
    enroll_device(fleet.paths, "rogue", "x86-cpu", data_dir=fleet.paths.root / "rogue")
    password = enroll_device(fleet.paths, "rogue", "x86-cpu", data_dir=fleet.paths.root / "rogue",
                             replace=True).password.get_secret_value()
    topics = Topics("default")
    rogue = connect(fleet.hub.service.settings.broker_url, "rogue", password)
    assert rogue.connect_rc == 0
    before = dict(fleet.hub.service.stats)
    for payload in (b"not json", b"{}", b"[1,2]", b'{"kind": "benchmark"}', b"x" * 300_000,
                    encode(DeviceState(device_id="cam-01", online=False))):
        rogue.publish(topics.events("rogue"), payload, qos=1).wait_for_publish(5)
    rogue.publish(topics.state("rogue"), encode(DeviceState(device_id="cam-01", online=False)), qos=1).wait_for_publish(5)
    assert wait_for(lambda: fleet.hub.service.stats["rejected"] >= before["rejected"] + 6, timeout=10)
    # The impersonation changed nothing: cam-01 is still online.
    assert fleet.device("cam-01").online
    # Writing into another device's topics is denied by the broker's ACL (reason 135 under MQTT 5).
    info = rogue.publish(topics.state("cam-01"), encode(DeviceState(device_id="cam-01", online=False)), qos=1)
    info.wait_for_publish(5)
    time.sleep(0.5)
    assert fleet.device("cam-01").online
    rogue.disconnect()
    # The hub still works: a publish still reaches the agent and gets it activated.
    outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                      fleet.paths, fleet.hub.registry)
    deploy(fleet.hub.fleet, outcome, ["x86-cpu"])
    assert wait_for(lambda: settled(fleet, "cam-01"), timeout=120), fleet.log("cam-01")[-2000:]


def test_wrong_password_is_refused(fleet):
    fleet.add_agent("cam-01")
    client = connect(fleet.hub.service.settings.broker_url, "cam-01", "not-the-password")
    assert client.connect_rc in (134, 135)


def test_tampered_artifact_is_never_activated(fleet, tiny_mlp):
    outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                      fleet.paths, fleet.hub.registry)
    store = ArtifactStore(fleet.paths.artifacts_dir)
    tampered = next(v for v in outcome.variants if v.label == "int8-dynamic")
    path = store.path_for(tampered.sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the hub's copy: sha256 no longer matches
    path.write_bytes(bytes(data))
    fleet.add_agent("cam-01")
    deploy(fleet.hub.fleet, outcome, ["x86-cpu"])
    assert wait_for(lambda: settled(fleet, "cam-01"), timeout=120), fleet.log("cam-01")[-2000:]
    report = fleet.hub.fleet.reports("cam-01", [tampered.id])[tampered.id]
    assert not report.ok and "sha256" in report.error
    assert fleet.device("cam-01").active_variant != tampered.id
    verdict = next(v for v in fleet.hub.fleet.selection("cam-01").explanation["verdicts"] if v["variant_id"] == tampered.id)
    assert not verdict["eligible"] and "failed on the device" in verdict["reason"]
    assert not list((fleet.paths.root / "agents" / "cam-01" / "cache").glob(f"{tampered.sha256}*"))


def test_hub_restart_loses_nothing_and_last_will_marks_offline(fleet, tiny_mlp, fmnist_cnn):
    fleet.add_agent("cam-01")
    first = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                    fleet.paths, fleet.hub.registry)
    deploy(fleet.hub.fleet, first, ["x86-cpu"])
    assert wait_for(lambda: settled(fleet, "cam-01"), timeout=120), fleet.log("cam-01")[-2000:]
    before = fleet.hub.fleet.events("cam-01")

    # Restart the hub (and its managed broker) on the same home while the agent keeps running.
    fleet.hub.stop()
    fleet.hub = HubService(fleet.paths, options=HubOptions(benchmark=FAST_BENCH, tick_s=0.3)).start()
    second = publish(PublishOptions(source=str(fmnist_cnn["onnx"]), name="fmnist", eval_path=fmnist_cnn["eval"]),
                     fleet.paths, fleet.hub.registry)
    deploy(fleet.hub.fleet, second, ["x86-cpu"])
    def runs_both() -> bool:  # a second model is a second slot beside the first (protocol v2)
        state = fleet.device("cam-01").state
        selections = fleet.hub.fleet.selections_many(["cam-01"]).get("cam-01", [])
        return len(selections) == 2 and sorted(s.winner for s in selections if s.winner) == sorted(state.active_variants)

    assert wait_for(runs_both, timeout=180), fleet.log("cam-01")[-2000:]
    after = fleet.hub.fleet.events("cam-01")
    ids = [e["event_id"] for e in after]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert {e["event_id"] for e in before} <= set(ids)
    assert {e["variant_id"] for e in after if e["kind"] == "benchmark"} >= {v.id for v in second.variants}
    assert sorted(v.split("-v")[0] for v in fleet.device("cam-01").state.active_variants) == ["digits", "fmnist"]

    # A device that dies without saying goodbye is marked offline by its Last Will.
    fleet.agents["cam-01"].send_signal(signal.SIGKILL)
    fleet.agents["cam-01"].wait()
    assert wait_for(lambda: not fleet.device("cam-01").online, timeout=90)
    assert any(v.startswith("fmnist") for v in fleet.device("cam-01").state.active_variants)  # what we knew is kept


def test_hub_with_an_external_broker(tmp_path, tiny_mlp):
    """--broker: the hub manages no Mosquitto of its own and uses the one it is given."""
    from external_broker import operator_broker

    from edgehub.hub.serve.settings import HubSettings

    paths = HubPaths.from_home(tmp_path / "home")
    with operator_broker(tmp_path / "external-broker", paths) as external:
        hub = HubService(paths, HubSettings(broker_url=external.url),
                         HubOptions(benchmark=FAST_BENCH, tick_s=0.3)).start()
        try:
            assert hub.broker is None
            assert wait_for(hub.service.connected.is_set, timeout=10)
            config = enroll_device(paths, "cam-01", "x86-cpu", data_dir=tmp_path / "agent")
            assert config.broker_url == external.url
            # With an external broker the operator adds the device's credentials there.
            external.files.set_password("cam-01", config.password.get_secret_value())
            (tmp_path / "agent.toml").write_text(dump_config(config.model_copy(update={"serve_port": 0})))
            agent = subprocess.Popen([sys.executable, "-m", "edgehub.hub.cli", "agent", "run", "--config",
                                      str(tmp_path / "agent.toml")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            try:
                outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits",
                                                 eval_path=tiny_mlp["eval"]), paths, hub.registry)
                deploy(hub.fleet, outcome, ["x86-cpu"])
                assert wait_for(lambda: hub.fleet.get_device("cam-01").active_variant is not None,
                                timeout=120)
            finally:
                agent.terminate()
                agent.wait(timeout=15)
        finally:
            hub.stop()
        assert external.running  # the hub did not stop a broker it does not own
