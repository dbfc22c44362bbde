"""Isolation: candidates that crash, hang or exhaust memory cost a report, never the agent.

Through the whole fleet loop: the hub (in this process: managed Mosquitto, artifact server,
fleet loop, selection) hands a device five candidates built on purpose (tests/support/fault_models.py);
the real agent process downloads, verifies and benchmarks each in a child process under the
hub's time and memory limits, reports every failure with its reason, and activates the one
good variant, which it then serves. A health check that fails after activation is rolled back.
"""

from __future__ import annotations

import json
import time

import pytest
from fault_harness import Crafted, agent, agent_port, enroll, http_json, register_crafted, wait_until
from fault_models import custom_op, good_mlp, hang, memory_hog, segfault_tflite

from edgehub.hub.home import HubPaths
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.protocol.messages import BenchmarkSettings

TIMEOUT_S = 6.0
MEMORY_MB = 512
BENCH = BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, threads=1, timeout_s=TIMEOUT_S,
                          memory_limit_mb=MEMORY_MB)


@pytest.fixture
def hub(tmp_path):
    service = HubService(HubPaths.from_home(tmp_path / "home"),
                         options=HubOptions(benchmark=BENCH, tick_s=0.3)).start()
    yield service
    service.stop()


def _report(hub, device, variant_id):
    return hub.fleet.reports(device, [variant_id]).get(variant_id)


def test_crashing_hanging_and_hungry_candidates_through_the_fleet_loop(hub, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    good, refs = good_mlp(models / "good.onnx")
    crafted = [Crafted("good", good, references=refs),
               Crafted("custom-op", custom_op(models / "custom.onnx")),
               Crafted("hang", hang(models / "hang.onnx")),
               Crafted("memory-hog", memory_hog(models / "hog.onnx")),
               Crafted("segfault", segfault_tflite(models / "segv.tflite"), format="tflite")]
    records = {r.label: r for r in register_crafted(hub.paths, hub.registry, "faulty", crafted)}
    _, config_path = enroll(hub.paths, "cam-01", tmp_path / "agents" / "cam-01")
    device = agent(config_path, tmp_path / "cam-01.log").start()
    try:
        started = time.monotonic()
        hub.fleet.deploy("faulty", 1, ["x86-cpu"])
        wait_until(lambda: (hub.fleet.get_device("cam-01") or None) is not None
                   and hub.fleet.get_device("cam-01").active_variant == records["good"].id, 120,
                   "the good variant to be active")
        elapsed = time.monotonic() - started

        expected = {"custom-op": "not a registered function/op", "hang": f"timed out after {TIMEOUT_S:g}s",
                    "memory-hog": f"exceeded the memory limit of {MEMORY_MB} MB", "segfault": "crashed with SIGSEGV"}
        reasons = {}
        for label, needle in expected.items():
            report = _report(hub, "cam-01", records[label].id)
            assert report is not None and not report.ok, label
            assert needle in report.error, (label, report.error)
            reasons[label] = report.error
        good_report = _report(hub, "cam-01", records["good"].id)
        assert good_report.ok and good_report.agreement == 1.0 and good_report.latency.p50_ms > 0

        verdicts = {v["variant_id"]: v for v in hub.fleet.selection("cam-01").explanation["verdicts"]}
        assert verdicts[records["good"].id]["selected"]
        for label in expected:
            assert not verdicts[records[label].id]["eligible"]
            assert "failed on the device" in verdicts[records[label].id]["reason"]

        # The agent lived through all of it, and serves the good variant.
        assert device.alive(), device.log()[-2000:]
        port = agent_port(device)
        status, reply = http_json(f"http://127.0.0.1:{port}/predict",
                                  json.dumps({"inputs": {"x": [[0.5] * 16]}}).encode())
        assert status == 200 and reply["variant"] == records["good"].id
        assert len(reply["outputs"]["logits"][0]) == 8
        print(f"\nisolation: 4 failing candidates reported in {elapsed:.1f}s; reasons: {json.dumps(reasons)[:600]}")
    finally:
        device.stop()


@pytest.fixture
def mini(tmp_path):
    from fault_harness import MiniHub

    hub = MiniHub(tmp_path / "minihub")
    yield hub
    hub.stop()


def test_failed_health_check_after_activation_rolls_back_and_is_reported(mini, tmp_path):
    """The hub orders a variant that benchmarked badly active anyway (a hub bug, a stale
    decision): the agent activates it, its health check crashes, the agent rolls back to the
    variant it had, reports both, and keeps serving the good one."""
    models = tmp_path / "models"
    models.mkdir()
    good, refs = good_mlp(models / "good.onnx")
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    candidates = [mini.candidate("cam-01", "m-good", good, references=refs),
                  mini.candidate("cam-01", "m-segv", segfault_tflite(models / "segv.tflite"), format="tflite")]
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 1, candidates, activate="m-good")
        wait_until(lambda: any(e["ok"] for e in mini.event_bodies("cam-01", "activation")), 60,
                   "the good variant to be activated")
        mini.desired("cam-01", 2, candidates, activate="m-segv")
        wait_until(lambda: len(mini.event_bodies("cam-01", "activation")) >= 2, 60, "the second activation")
        first, second = mini.event_bodies("cam-01", "activation")
        assert first["ok"] and first["variant_id"] == "m-good"
        assert not second["ok"] and second["variant_id"] == "m-segv"
        assert second["rolled_back_to"] == "m-good"
        assert "health check failed" in second["error"] and "SIGSEGV" in second["error"]
        bench = {e["variant_id"]: e for e in mini.event_bodies("cam-01", "benchmark")}
        assert bench["m-good"]["ok"] and not bench["m-segv"]["ok"]

        state = json.loads((config.data_dir / "state.json").read_text())
        assert state["slots"]["m"]["active"]["variant_id"] == "m-good" and state["slots"]["m"]["previous"] is None
        assert device.alive()
        status, reply = http_json(f"http://127.0.0.1:{agent_port(device)}/predict",
                                  json.dumps({"inputs": {"x": [[0.1] * 16]}}).encode())
        assert status == 200 and reply["variant"] == "m-good"
    finally:
        device.stop()
