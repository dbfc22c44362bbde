"""`edgehub hub serve --workers N`: extra fleet workers as supervised child processes, sharing the
devices' events over the MQTT 5 shared subscription; a smaller --workers retires the sessions of
the workers it no longer runs, so no event waits in them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from external_broker import operator_broker
from mqtt_helpers import wait_for

from edgehub.hub.broker.managed import ManagedBroker
from edgehub.hub.control.settings import owner_of
from edgehub.hub.fleet.views import StatusFilter
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.hub.serve.service import HubOptions, HubService, broker_dir
from edgehub.hub.serve.settings import HubSettings, load_settings
from edgehub.hub.serve.workers import read_status, status_path, worker_user
from edgehub.hub.sim.run import Simulation, enroll_simulated

DEVICES = 24


def wait(predicate, timeout: float) -> bool:
    """wait_for, polling at 5 Hz: the hub and the devices share two cores with the test."""
    return wait_for(predicate, timeout=timeout, interval=0.2)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie of ours does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_hub(paths: HubPaths, workers: int) -> HubService:
    settings = load_settings(paths.root)
    settings.workers = workers
    return HubService(paths, settings, HubOptions(tick_s=0.3)).start()


def deploy_and_settle(hub: HubService, paths: HubPaths, model: dict) -> None:
    outcome = publish(PublishOptions(source=str(model["onnx"]), name="digits", eval_path=model["eval"]), paths,
                      hub.registry)
    hub.fleet.deploy("digits", outcome.version.version, ["x86-cpu"])
    assert wait(lambda: hub.fleet.status_summary()["settled"] == DEVICES, timeout=60), hub.fleet.status_summary()


def acked_and_stored(hub: HubService, sim: Simulation) -> tuple[int, int]:
    return sim.stats()["events_acked"], hub.fleet.count_events()


def test_two_workers_share_the_fleet_and_a_dead_one_comes_back(tmp_path, tiny_mlp):
    paths = HubPaths.from_home(tmp_path / "home")
    hub = start_hub(paths, 2)
    sim = None
    try:
        worker_pid = hub.workers.pids[0]
        assert wait(lambda: read_status(paths, 1).get("started"), timeout=30), read_status(paths, 1)
        assert worker_user(1) in hub.broker.files.users() and load_settings(paths.root).workers == 2
        assert oct((broker_dir(paths) / "hub-1.secret").stat().st_mode & 0o777) == "0o600"
        sim = Simulation(paths, enroll_simulated(paths, DEVICES, tags=["lab"]), processes=1).start()
        deploy_and_settle(hub, paths, tiny_mlp)
        rows = hub.fleet.status_rows(StatusFilter())
        assert {owner_of(r["device"], 2) for r in rows} == {0, 1}
        assert all(hub.fleet.desired(r["device"]) is not None for r in rows)
        # Both workers stored events (the broker split them) and reconciled their own devices.
        assert wait(lambda: read_status(paths, 1)["stats"]["events_stored"] > 0, timeout=10)
        child = read_status(paths, 1)["stats"]
        assert hub.service.stats["events_stored"] > 0 and child["reconciled"] > 0 and hub.service.stats["reconciled"] > 0
        assert wait(lambda: len(set(acked_and_stored(hub, sim))) == 1, timeout=15), acked_and_stored(hub, sim)

        # A worker killed outright is restarted by the supervision `hub serve` runs every second;
        # what the broker queued for it meanwhile (its persistent session) reaches the database.
        os.kill(worker_pid, signal.SIGKILL)
        assert wait(lambda: not alive(worker_pid), timeout=5)
        sim.flood(2)
        restarted: list[str] = []

        def supervise() -> bool:  # what `hub serve` does every second
            restarted.extend(hub.supervise())
            return bool(restarted)

        assert wait(supervise, timeout=10)
        assert restarted == ["worker 1"] and hub.workers.pids and hub.workers.pids[0] != worker_pid
        new_pid = hub.workers.pids[0]
        assert wait(lambda: sim.stats()["events_acked"] >= sim.stats()["events_sent"], timeout=20)
        assert wait(lambda: len(set(acked_and_stored(hub, sim))) == 1, timeout=30), acked_and_stored(hub, sim)
        assert wait(lambda: read_status(paths, 1).get("pid") == new_pid and read_status(paths, 1)["started"],
                        timeout=20)
    finally:
        if sim is not None:
            sim.stop()
        hub.stop()
    # Stopping the hub leaves no worker behind; the worker said it stopped.
    assert not alive(new_pid) and hub.workers.pids == []
    assert read_status(paths, 1)["state"] == "stopped"


def test_fewer_workers_retire_the_sessions_left_over(tmp_path, tiny_mlp):
    """From 2 workers to 1: the broker kept worker 1's session in the shared subscription, with its
    share of the events queued; the next start stores them and ends the session and its user."""
    paths = HubPaths.from_home(tmp_path / "home")
    hub = start_hub(paths, 2)
    sim = None
    try:
        assert wait(lambda: read_status(paths, 1).get("started"), timeout=30)
        sim = Simulation(paths, enroll_simulated(paths, DEVICES), processes=1).start()
        deploy_and_settle(hub, paths, tiny_mlp)  # flooding devices repeat a benchmark they ran
        hub.workers.stop()  # worker 1 is gone, its session stays
        sim.flood(3)
        assert wait(lambda: sim.stats()["events_acked"] >= sim.stats()["events_sent"], timeout=20)
        time.sleep(1.0)
        acked, stored = acked_and_stored(hub, sim)
        assert stored < acked, (stored, acked)  # part of the events wait in worker 1's session
        hub.stop()
        hub = start_hub(paths, 1)
        assert hub.retired.get(1, 0) > 0 and hub.workers is None
        assert worker_user(1) not in hub.broker.files.users() and not (broker_dir(paths) / "hub-1.secret").exists()
        assert worker_user(1) not in (broker_dir(paths) / "dynamic-security.json").read_text()
        assert wait(lambda: len(set(acked_and_stored(hub, sim))) == 1, timeout=30), acked_and_stored(hub, sim)
        # No session is left to take a share: everything sent from now on is stored by worker 0.
        # The devices lost the broker with the hub's restart: flood once they are all back (what
        # is published while one reconnects waits in it; under load its retries take seconds).
        assert wait(lambda: sim.stats()["connected"] == DEVICES, timeout=30), sim.stats()
        sent = sim.stats()["events_sent"]
        sim.flood(2)
        assert wait(lambda: sim.stats()["events_acked"] >= sent + 2 * DEVICES, timeout=30), (sent, sim.stats())
        assert sim.stats()["events_refused"] == 0, sim.stats()
        assert wait(lambda: len(set(acked_and_stored(hub, sim))) == 1, timeout=20), acked_and_stored(hub, sim)
    finally:
        if sim is not None:
            sim.stop()
        hub.stop()


def serve(home, log, *args) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "edgehub.hub.cli", "hub", "serve", "--home", str(home),
                                 *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_hub_serve_workers_cli(tmp_path):
    """`hub serve --workers 2` keeps the setting, runs the worker, and leaves nothing behind on
    SIGTERM; a `hub serve` killed outright takes its workers with it (they watch their parent)."""
    paths, log = HubPaths.from_home(tmp_path / "home"), tmp_path / "serve.log"
    proc = serve(paths.root, log, "--workers", "2")
    try:
        assert wait(lambda: read_status(paths, 1).get("started"), timeout=30), log.read_text()[-3000:]
        assert load_settings(paths.root).workers == 2
        pid = read_status(paths, 1)["pid"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 0 and "2 worker(s)" in log.read_text(), log.read_text()[-3000:]
        assert not alive(pid) and read_status(paths, 1)["state"] == "stopped"
        proc = serve(paths.root, log)  # --workers kept from the last run
        assert wait(lambda: read_status(paths, 1).get("pid") not in (None, pid)
                        and read_status(paths, 1).get("started"), timeout=30)
        pid = read_status(paths, 1)["pid"]
        proc.kill()
        proc.wait(10)
        assert wait(lambda: not alive(pid), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        ManagedBroker(broker_dir(paths), "default").stop()  # the killed hub's broker outlives it


def test_external_broker_needs_the_worker_users(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "hub-mqtt-password").write_text("x\n")
    (home / "hub.json").write_text(json.dumps(HubSettings(broker_url="mqtt://127.0.0.1:9", workers=3).model_dump()))
    result = subprocess.run([sys.executable, "-m", "edgehub.hub.cli", "hub", "serve", "--home", str(home)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line and "edgehub-hub-1" in line and str(home / "hub-mqtt-password-1") in line, line


@pytest.mark.parametrize("index", [0, 1, 5])
def test_worker_users_and_files(tmp_path, index):
    paths = HubPaths.from_home(tmp_path)
    assert worker_user(index) == ("edgehub-hub" if index == 0 else f"edgehub-hub-{index}")
    assert status_path(paths, index).name == f"worker-{index}.json" and read_status(paths, index) == {}


def test_external_broker_with_the_worker_users(tmp_path):
    """With --broker, worker i logs in as edgehub-hub-i with <home>/hub-mqtt-password-i."""
    paths = HubPaths.from_home(tmp_path / "home")
    paths.root.mkdir(parents=True, exist_ok=True)
    with operator_broker(tmp_path / "their-broker", paths, extra_hub_users=(worker_user(1),)) as broker:
        broker.files.set_password(worker_user(1), "worker-one-password")
        (paths.root / "hub-mqtt-password-1").write_text("worker-one-password\n")
        hub = HubService(paths, HubSettings(broker_url=broker.url, workers=2), HubOptions(tick_s=0.3)).start()
        try:
            assert hub.broker is None
            assert wait(lambda: read_status(paths, 1).get("connected") and hub.service.connected.is_set(), timeout=30)
        finally:
            hub.stop()
        assert read_status(paths, 1)["state"] == "stopped"


def test_cohort_sampling_setting_reaches_every_worker(tmp_path, tiny_mlp):
    """`hub serve --cohort-sample 3` with two workers: 24 simulated devices of three hardware kinds
    make three cohorts; in each, three are sampled and benchmark every candidate; the others benchmark the cohort's winner only,
    unless their own result disagreed with the cohort's (they then join the sample), whichever
    worker owns them."""
    paths = HubPaths.from_home(tmp_path / "home")
    settings = load_settings(paths.root)
    settings.workers, settings.cohort_sample = 2, 3
    hub = HubService(paths, settings, HubOptions(tick_s=0.3)).start()
    sim = None
    try:
        assert load_settings(paths.root).cohort_sample == 3
        sim = Simulation(paths, enroll_simulated(paths, DEVICES), processes=1).start()
        # A device whose hardware is not known yet has no cohort and benchmarks every candidate:
        # publish once every device has reported its state.
        ids = hub.fleet.device_ids()
        assert wait(lambda: all(d.cohort for d in hub.fleet.devices_by_ids(ids).values()), timeout=30)
        deploy_and_settle(hub, paths, tiny_mlp)
        cohorts = {d.cohort for d in hub.fleet.devices_by_ids(ids).values()}
        assert len(cohorts) == 3 and None not in cohorts
        version = hub.registry.latest_version("digits").version
        samples = hub.fleet.cohort_samples([(c, "digits", version) for c in cohorts])
        sample = {d: why for per_cohort in samples.values() for d, why in per_cohort.items()}
        reported = hub.fleet.reported_variants(ids)
        variants = max(len(v) for v in reported.values())
        assert variants > 1
        full = {d for d in ids if len(reported.get(d, ())) == variants}
        assert full == set(sample), (sample, {d: len(v) for d, v in reported.items()})
        members = Counter(d.cohort for d in hub.fleet.devices_by_ids(ids).values())
        # At least k per cohort (two workers recruiting at the same moment may both add some).
        assert all(sum(1 for why in c.values() if why == "sampled") >= min(3, members[key[0]])
                   for key, c in samples.items()), (samples, members)
        assert len(full) < DEVICES  # the others skipped the full benchmark
        assert all(len(reported[d]) == 1 for d in ids if d not in full)
        assert {owner_of(d, 2) for d in ids if d not in full} == {0, 1}
    finally:
        if sim is not None:
            sim.stop()
        hub.stop()
