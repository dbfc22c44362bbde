"""Simulated devices: the declared synthetic distribution (pure), bulk enrolment with broker
credentials, and `edgehub fleet simulate` against a hub on the real broker."""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest
from click.testing import CliRunner
from mqtt_helpers import close, connect, wait_for
from sim_hub import SimHub

from edgehub.hub.cli import cli
from edgehub.hub.sim.model import FailureRule, HardwareKind, SyntheticDistribution
from edgehub.hub.sim.run import SimulationError, enroll_simulated, sim_ids, sim_password

BASE = dict(event_id="ev-sim-00000001", device_id="sim-00001", generation=1, variant_id="m-v1-fp32",
            runtime="simulated", runtime_version="sim-1")


def test_measurements_are_deterministic_and_follow_the_distribution():
    d = SyntheticDistribution(sigma=0.1)
    first = d.measure("sim-00001", "m-v1-fp32", "fp32", 1_000_000, BASE)
    again = d.measure("sim-00001", "m-v1-fp32", "fp32", 1_000_000, BASE)
    assert first.model_dump(exclude={"at"}) == again.model_dump(exclude={"at"})
    assert first.ok and first.runtime == "simulated" and first.agreement == 1.0
    assert first.latency.p50_ms < first.latency.p90_ms < first.latency.p99_ms
    speed = d.kind_of("sim-00001").speed
    p50s = [d.measure(f"sim-{i:05d}", "m-v1-fp32", "fp32", 0, BASE).latency.p50_ms / d.kind_of(f"sim-{i:05d}").speed
            for i in range(400)]
    assert statistics.median(p50s) == pytest.approx(2.0, rel=0.05)  # base_p50_ms["fp32"]
    assert 0.05 < statistics.pstdev([x / 2.0 for x in p50s]) < 0.15  # sigma 0.1
    assert speed in {k.speed for k in d.hardware}


def test_hardware_kinds_follow_their_weights():
    d = SyntheticDistribution(hardware=[HardwareKind(name="a", weight=3, cores=2, ram_mb=2048, speed=2),
                                        HardwareKind(name="b", weight=1, cores=8, ram_mb=8192, speed=1)])
    kinds = Counter(d.kind_of(f"dev-{i}").name for i in range(4000))
    assert 0.7 < kinds["a"] / 4000 < 0.8
    hw = d.hardware_of("dev-1")
    assert hw.cores in (2, 8) and hw == d.hardware_of("dev-1")


def test_failure_rules():
    d = SyntheticDistribution(failures=[FailureRule(match="-int8", benchmark=0.5, activation=1.0)])
    results = [d.measure(f"sim-{i}", "m-v1-int8", "int8", 0, BASE).ok for i in range(400)]
    assert 0.4 < results.count(False) / 400 < 0.6
    assert all(d.measure(f"sim-{i}", "m-v1-fp32", "fp32", 0, BASE).ok for i in range(50))
    assert d.activation_fails("sim-1", "m-v1-int8") and not d.activation_fails("sim-1", "m-v1-fp32")
    failed = next(d.measure(f"sim-{i}", "m-v1-int8", "int8", 0, BASE) for i in range(400)
                  if not d.measure(f"sim-{i}", "m-v1-int8", "int8", 0, BASE).ok)
    assert failed.latency is None and "simulated" in failed.error


def test_ids_and_passwords():
    assert sim_ids("sim", 3) == ["sim-00000", "sim-00001", "sim-00002"]
    assert sim_ids("x", 200_000)[-1] == "x-199999"
    assert sim_password(b"k" * 32, "a") == sim_password(b"k" * 32, "a") != sim_password(b"k" * 32, "b")
    assert sim_password(b"k" * 32, "a") != sim_password(b"j" * 32, "a")


def test_enrolment_sets_broker_credentials(tmp_path):
    with SimHub(tmp_path / "home") as hub:
        specs = enroll_simulated(hub.paths, 300, tags=["lab"], prefix="bulk")
        assert len(specs) == 300 and {s.source_address for s in specs} == {None}
        assert hub.broker.files.has_user("bulk-00299") and hub.broker.files.has_user("edgehub-hub")
        device = hub.fleet.get_device("bulk-00007")
        assert device.simulated and device.tags == ["lab"]
        ok = connect(hub.broker.url, "bulk-00007", specs[7].password)
        assert ok.connect_rc == 0
        close(ok)
        assert connect(hub.broker.url, "bulk-00007", specs[8].password).connect_rc in (134, 135)
        # Enrolling again replaces, nothing is duplicated; the hub user keeps working.
        enroll_simulated(hub.paths, 300, prefix="bulk")
        assert hub.broker.files.users().count("bulk-00001") == 1 and len(hub.fleet.devices()) == 300
        with pytest.raises(SimulationError):
            enroll_simulated(hub.paths, 0)


def test_fleet_simulate_command(tmp_path, tiny_mlp):
    with SimHub(tmp_path / "home") as hub:
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        result = CliRunner().invoke(cli, ["fleet", "simulate", "--devices", "25", "--duration", "12", "--tag", "lab",
                                          "--fail", "-fp16:benchmark=1", "--home", str(hub.paths.root), "--json"])
        assert result.exit_code == 0, result.output
        stats = json.loads(result.output[result.output.index("{"):])["stats"]
        assert stats["connected_once"] == 25 and stats["activations"] == 25 and stats["refused"] == 0
        assert stats["events_acked"] == stats["events_sent"] > 25
        assert wait_for(lambda: hub.fleet.count_events() == stats["events_acked"], timeout=10)
        rows = hub.rows(group="lab")
        assert len(rows) == 25 and all(r["simulated"] for r in rows)
        assert all(not r["online"] for r in rows)  # they said goodbye
        assert all(r["runtime"] == "simulated" and r["runtimes"] == {"simulated": "sim-1"} for r in rows)
        assert not any(r["active_variant"].endswith("-fp16") for r in rows)  # fp16 "failed" everywhere
        bad = CliRunner().invoke(cli, ["fleet", "simulate", "--devices", "2", "--fail", "x:often=2",
                                       "--duration", "3", "--home", str(hub.paths.root)])
        assert bad.exit_code == 1 and "bad --fail" in bad.output
        assert "sim-00001" in {d.id for d in hub.fleet.devices()} and len(hub.fleet.devices()) == 25  # none enrolled


def test_events_sent_before_the_hub_subscribes_again_after_a_broker_restart_are_not_lost(tmp_path, tiny_mlp):
    """Mosquitto 2.0.11 does not restore shared subscriptions from its persistence file: until the
    hub has reconnected and subscribed again, the broker acknowledges events with reason 16 ("no
    matching subscribers") and drops them. A simulated device, like the agent, sends them again."""
    with SimHub(tmp_path / "home") as hub:
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        sim = hub.simulate(4)
        assert wait_for(lambda: sim.stats().get("activations") == 4, timeout=60), sim.stats()
        hub.stop_workers()
        with hub.broker.edit_stopped():
            pass  # a restart: sessions come back from the file, the hub's shared subscription does not
        assert wait_for(lambda: sim.stats().get("connected") == 4, timeout=30), sim.stats()
        sim.flood(5)
        assert wait_for(lambda: sim.stats().get("events_unrouted", 0) >= 20, timeout=30), sim.stats()
        stored = hub.fleet.count_events()
        hub.start_workers()
        assert wait_for(lambda: sim.stats()["events_acked"] == sim.stats()["events_sent"], timeout=60), sim.stats()
        assert wait_for(lambda: hub.fleet.count_events() == sim.stats()["events_sent"], timeout=30)
        assert hub.fleet.count_events() >= stored + 20
        assert hub.fleet.events_missing() == (0, 0)
