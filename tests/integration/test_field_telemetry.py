"""Field telemetry end to end on the real broker: a real agent (ONNX Runtime) reports what real
/predict requests did, including while the hub was down, and drift when the served inputs change;
simulated devices report synthetic intervals, and a rollout that passes on installs but fails on
the field error rate rolls back with the figures in its history."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from api_hub import ApiHub
from click.testing import CliRunner
from fault_harness import agent, agent_port, enroll, http_json, wait_until
from mqtt_helpers import wait_for

from edgehub.hub.cli import cli
from edgehub.hub.sim.model import FailureRule, SyntheticDistribution


def edgehub(hub, *args) -> dict:
    result = CliRunner().invoke(cli, [*args, "--home", str(hub.paths.root), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def predict(port: int, rows: np.ndarray) -> None:
    for row in rows:
        code, body = http_json(f"http://127.0.0.1:{port}/predict", json.dumps({"inputs": {"x": row[None].tolist()}}).encode())
        assert code == 200, body


def test_a_real_agent_reports_field_telemetry_drift_and_what_it_served_while_the_hub_was_down(tmp_path, tiny_mlp):
    hub = ApiHub(tmp_path / "home", telemetry_interval_s=2.0)
    device = None
    try:
        _, config = enroll(hub.paths, "cam-01", tmp_path / "agents" / "cam-01")
        device = agent(config, tmp_path / "cam-01.log").start()
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        wait_until(lambda: (d := hub.fleet.get_device("cam-01")) is not None and d.active_variant, 90,
                   "the agent to activate a variant")
        port = agent_port(device)
        x = tiny_mlp["x"]
        predict(port, x[:300])
        assert http_json(f"http://127.0.0.1:{port}/predict", b'{"inputs": {"x": [[1, 2]]}}')[0] == 400

        def field(since="1h") -> dict:
            return edgehub(hub, "fleet", "telemetry", "cam-01", "--since", since)

        assert wait_for(lambda: field()["summary"]["requests"] == 300 and field()["summary"]["errors"], 30), field()
        summary = field()["summary"]
        assert summary["errors"] == {"bad_request": 1} and summary["p99_ms"] is not None
        assert summary["drift"] is not None and summary["drift"] < 0.1  # eval-like inputs, 300 of them
        status = edgehub(hub, "fleet", "status")
        row = status["devices"][0]
        assert row["field"]["error_rate"] > 0 and status["summary"]["drift"]["devices"] == 0

        # Inputs unlike the eval set: the drift shows per device and in the status summary.
        predict(port, np.clip(x[:300] + 0.6, 0, 2).astype(np.float32))
        assert wait_for(lambda: edgehub(hub, "fleet", "status")["summary"]["drift"]["devices"] == 1, 30)
        assert field()["summary"]["drift"] > 0.25

        # The hub (and its broker) down: the agent keeps serving; what it served arrives afterwards.
        hub.service.stop()
        predict(port, x[300:350])
        hub.service = type(hub.service)(hub.paths, hub.service.settings, hub.service.options).start()
        assert wait_for(lambda: field()["summary"]["requests"] == 650, 60), field()["summary"]
        intervals = field()["intervals"]
        assert sum(i["requests"] for i in intervals) == 650 and len({i["variant_id"] for i in intervals}) == 1
        # Raw inputs never leave the device: an interval holds counts, moments and histograms only.
        stored = hub.fleet.telemetry(device_id="cam-01")[0].stats
        assert set(stored) == {"requests", "errors", "latency_counts", "inputs", "outputs"}
        assert all(set(i) == {"name", "count", "mean", "m2", "min", "max", "hist"} for i in stored["inputs"])
    finally:
        if device is not None:
            device.stop()
        hub.close()


def test_a_rollout_that_passes_on_installs_but_fails_in_the_field_rolls_back(tmp_path, tiny_mlp):
    flaky_v2 = SyntheticDistribution(field_requests_per_min=1200,
                                     failures=[FailureRule(match="digits-v2-", field_errors=0.2)])
    with ApiHub(tmp_path / "home", telemetry_interval_s=1.0) as hub:
        hub.simulate(20, tags=["lab"], distribution=flaky_v2)
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 20, 60)
        assert wait_for(lambda: edgehub(hub, "fleet", "telemetry", "--model", "digits")["summary"]["requests"] > 2000,
                        30)
        v1 = edgehub(hub, "fleet", "telemetry", "--model", "digits")["summary"]
        assert v1["devices"] == 20 and v1["error_rate"] == 0 and v1["p99_ms"] is not None
        hub.publish(tiny_mlp, new_version=True)
        started = edgehub(hub, "rollout", "start", "digits:2", "--group", "lab", "--canary", "5",
                          "--max-error-rate", "5%", "--min-requests", "200")
        rid = started["id"]

        def status() -> dict:
            return edgehub(hub, "rollout", "status", str(rid))

        assert wait_for(lambda: status()["status"] == "rolled_back", 60), status()
        final = status()
        assert final["counts"]["0"]["activated"] == 5 and final["counts"]["0"]["failed"] == 0  # installs passed
        assert "field error rate 20.0% > 5.0%" in final["reason"]
        figures = final["history"][-1]["field"]
        assert figures["requests"] >= 200 and figures["error_rate"] == pytest.approx(0.2, abs=0.02)
        assert figures["devices"] == 5 and final["field"]["max_error_rate"] == 0.05
        # The canaries go back to v1; the rest never left it.
        assert wait_for(lambda: sum(1 for r in hub.fleet.status_rows() if r["active_variant"].startswith("digits-v1"))
                        == 20, 60)


def test_a_device_flooding_telemetry_is_limited_and_the_others_are_not(tmp_path, tiny_mlp):
    import uuid
    from datetime import datetime, timezone

    from mqtt_helpers import close, connect

    from edgehub.hub.control.telemetry_limit import BURST
    from edgehub.hub.sim.run import enroll_simulated
    from edgehub.protocol.messages import FieldTelemetry
    from edgehub.protocol.telemetry import FieldStats
    from edgehub.protocol.topics import Topics
    from edgehub.protocol.wire import encode

    steady = SyntheticDistribution(field_requests_per_min=600)
    with ApiHub(tmp_path / "home", telemetry_interval_s=1.0) as hub:
        hub.simulate(5, distribution=steady)
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 5, 60)
        (flooder,) = enroll_simulated(hub.paths, 1, prefix="flood")  # reloads the broker: the hub reconnects
        seen = len(hub.fleet.telemetry(device_id="sim-00000"))
        assert wait_for(lambda: len(hub.fleet.telemetry(device_id="sim-00000")) > seen + 1, 30)  # the hub is back
        client = connect(f"mqtt://127.0.0.1:{hub.service.settings.mqtt_port}", flooder.id, flooder.password)
        assert client.connect_rc == 0
        now = datetime.now(timezone.utc)
        before = {d: len(hub.fleet.telemetry(device_id=d)) for d in ("sim-00000", "sim-00004")}
        infos = [client.publish(Topics("default").events(flooder.id), encode(FieldTelemetry(
            event_id=uuid.uuid4().hex, device_id=flooder.id, generation=0, variant_id=None, start=now, end=now,
            stats=FieldStats(requests=1))), qos=1) for _ in range(400)]
        for info in infos:
            info.wait_for_publish(10)
        close(client)
        assert wait_for(lambda: hub.service.service.stats.get("telemetry_limited", 0) > 0, 30)
        time.sleep(3)
        stored = len(hub.fleet.telemetry(device_id=flooder.id))
        assert BURST <= stored < BURST + 20, stored  # the burst, and the trickle the rate allows
        assert hub.service.service.stats["telemetry_limited"] == 400 - stored
        # The steady devices went on being stored meanwhile.
        assert all(len(hub.fleet.telemetry(device_id=d)) >= before[d] + 2 for d in before)
