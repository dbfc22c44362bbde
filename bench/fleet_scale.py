"""Fleet scale: 1,000 / 5,000 / 10,000 simulated devices against one hub on this machine.

    .venv/bin/python bench/fleet_scale.py [--sizes 1000,5000,10000] [--workers 1] [--cohort-k 3]
                                          [--db-url postgresql+psycopg://...] [--json out.json]

For each size, on a fresh hub home: a managed Mosquitto (started here, as `hub serve` would),
hub worker process(es) (FleetService, one per process, sharing events over a shared
subscription), simulated devices in a few processes (hub/sim/devices.py: paho clients on one
epoll loop per process, the real protocol through the real broker, numbers from the declared
synthetic distribution). Measured side by side:

- connect: time until every device's CONNACK, and until the hub stored every device online;
- settle: publish-deploy of a real model (4 variants) until every device runs its selected
  variant (cohort benchmarking with k samples per cohort);
- rollout: v2 to the whole fleet, 5% canary then the rest; the decision itself (one GROUP BY +
  the pure state machine) timed here, the hub's own step time, and the time until the rest got
  their new desired state and until completion;
- fleet status: `status_view` (summary + first 50 rows) and every row, and the CLI end to end;
- ingest: with the hub stopped, every device sends reports (50,000 in all, in rounds of 5 per
  device, queued for the hub's persistent session); the hub is started and the time to store
  them all gives events/s, and its CPU time per event what it costs with a core to itself;
- hub RSS (each worker process), and events lost (acknowledged to a device but not stored).

`--replay HOME...` replays the ingest phase offline on the databases of earlier runs (their homes
stay in /tmp): the hub's own per-report cost, without broker, network thread or neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOD_TOTAL = 50_000  # reports sent while the hub is down, whatever the fleet size
FLOOD_PER_DEVICE = 5


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- the hub worker (a separate process) ---------------------------------------------------------

def serve_worker(home: str, index: int, workers: int, cohort_k: int, port: int, password: str,
                 receive_maximum: int) -> None:
    """One hub worker: FleetService on the broker; writes its stats to <home>/worker-<i>.json."""
    import logging

    from edgehub.hub.control.cohorts import CohortPolicy
    from edgehub.hub.control.selection import Policy
    from edgehub.hub.control.settings import FleetSettings
    from edgehub.hub.control.worker import FleetService
    from edgehub.hub.fleet.store import FleetStore
    from edgehub.hub.home import HubPaths
    from edgehub.hub.serve.service import share_group
    from edgehub.protocol.messages import BenchmarkSettings
    from edgehub.zoo.profiles import load_profiles
    from edgehub.zoo.registry import Registry
    from edgehub.zoo.signing import HubKey

    logging.basicConfig(level=logging.WARNING)
    paths = HubPaths.from_home(home)
    user = "edgehub-hub" if index == 0 else f"edgehub-hub-{index}"
    settings = FleetSettings(fleet="default", broker_url=f"mqtt://127.0.0.1:{port}", username=user, password=password,
                             client_id=user, artifact_base_url="http://127.0.0.1:9/", url_secret=b"b" * 32,
                             policy=Policy(), benchmark=BenchmarkSettings(), share_group=share_group(paths), tick_s=0.5,
                             public_key_b64=HubKey.load_or_create(paths.keys_dir).public_b64,
                             cohorts=CohortPolicy(sample_size=cohort_k) if cohort_k else None,
                             worker_index=index, worker_count=workers,
                             receive_maximum=receive_maximum or None)
    service = FleetService(settings, Registry(paths.db_url), FleetStore(paths.db_url), load_profiles())
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    service.start()
    out = Path(home) / f"worker-{index}.json"
    peak, cpu_at_start, worker_at_start = 0.0, None, 0.0
    while not stop:
        peak = max(peak, rss_mb(os.getpid()))
        tmp = out.with_suffix(".tmp")
        cpu = os.times().user + os.times().system
        if cpu_at_start is None and service.started.is_set():
            cpu_at_start = cpu  # after the start-up sweep of every device
            worker_at_start = service.stats.get("worker_cpu_s", 0.0)
        tmp.write_text(json.dumps({**service.stats, "rss_mb": rss_mb(os.getpid()), "peak_rss_mb": peak,
                                   "cpu_s": cpu, "cpu_at_start_s": cpu_at_start,
                                   "worker_cpu_since_start_s": service.stats.get("worker_cpu_s", 0.0) - worker_at_start
                                   if cpu_at_start is not None else 0.0,
                                   "started": service.started.is_set(), "inbox": len(service._inbox)}))
        os.replace(tmp, out)
        time.sleep(0.25)
    service.stop()


# ---- the orchestration ----------------------------------------------------------------------------

class Bench:
    def __init__(self, n: int, workers: int, cohort_k: int, db_url: str | None, receive_maximum: int):
        from edgehub.hub.broker.managed import ManagedBroker
        from edgehub.hub.fleet.store import FleetStore
        from edgehub.hub.home import HubPaths
        from edgehub.hub.serve.service import broker_dir, share_group
        from edgehub.hub.serve.settings import HubSettings, save_settings
        from edgehub.zoo.registry import Registry

        self.n, self.workers, self.cohort_k, self.receive_maximum = n, workers, cohort_k, receive_maximum
        self.home = Path(tempfile.mkdtemp(prefix=f"fleet-scale-{n}-"))
        self.pg_schema = None
        if db_url:  # PostgreSQL: a fresh schema per size, dropped at the end
            from sqlalchemy import create_engine, text

            self.pg_schema, self.pg_url = f"fleet_scale_{n}_{os.urandom(4).hex()}", db_url
            admin = create_engine(db_url)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self.pg_schema}"'))
            admin.dispose()
            os.environ["EDGEHUB_DB_URL"] = f"{db_url}?options=-csearch_path%3D{self.pg_schema}"
        self.paths = HubPaths.from_home(self.home)
        users = tuple(f"edgehub-hub-{i}" for i in range(1, workers))
        self.broker = ManagedBroker(broker_dir(self.paths), "default", extra_hub_users=users,
                                    share_group=share_group(self.paths))
        self.passwords = [self.broker.files.hub_password()]
        for user in users:
            self.passwords.append(os.urandom(12).hex())
            self.broker.files.set_password(user, self.passwords[-1])
        self.broker.start()
        save_settings(self.paths.root, HubSettings(mqtt_port=self.broker.port))
        self.fleet, self.registry = FleetStore(self.paths.db_url), Registry(self.paths.db_url)
        self.procs: list[subprocess.Popen] = []
        self.sim = None

    def start_workers(self) -> None:
        for i in range(self.workers):
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--serve-worker", str(self.home), str(i), str(self.workers),
                 str(self.cohort_k), str(self.broker.port), self.passwords[i], str(self.receive_maximum)],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}))
        self.wait(lambda: all(self.worker_stats(i).get("started") for i in range(self.workers)), 120)

    def stop_workers(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=60)
        self.procs = []
        for i in range(self.workers):  # a restarted worker must not look started from old stats
            (self.home / f"worker-{i}.json").unlink(missing_ok=True)

    def worker_stats(self, i: int) -> dict:
        try:
            return json.loads((self.home / f"worker-{i}.json").read_text())
        except (OSError, ValueError):
            return {}

    def hub_stats(self) -> dict:
        total: dict = {}
        for i in range(self.workers):
            for k, v in self.worker_stats(i).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    total[k] = max(total.get(k, 0), v) if k.endswith(("max_s", "rss_mb")) else total.get(k, 0) + v
        return total

    @staticmethod
    def wait(predicate, timeout: float, interval: float = 0.25) -> float:
        started = time.perf_counter()
        while not predicate():
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"not done after {timeout:.0f} s")
            time.sleep(interval)
        return time.perf_counter() - started

    def _drop_schema(self) -> None:
        if self.pg_schema:
            from sqlalchemy import create_engine, text

            admin = create_engine(self.pg_url)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self.pg_schema}" CASCADE'))
            admin.dispose()

    def close(self) -> None:
        """Stop everything started, each step whatever happened to the one before."""
        steps = [self.stop_workers, self.broker.stop, self.fleet.close, self.registry.close, self._drop_schema]
        if self.sim is not None:
            steps.insert(0, lambda: self.sim.stop(timeout=60))
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - report and go on cleaning up
                print(f"cleanup step failed: {exc!r}", file=sys.stderr)


def publish_model(b: Bench, workdir: Path, new_version: bool = False):
    from edgehub.hub.publish.pipeline import PublishOptions, publish

    return publish(PublishOptions(source=str(workdir / "model.onnx"), name="fleet-model",
                                  eval_path=workdir / "eval.npz", new_version=new_version), b.paths, b.registry)


def make_model(workdir: Path) -> None:
    """A small MLP on scikit-learn's digits (real data), as ONNX with an eval set."""
    from edgehub.hub.examples.digits import digits_mlp

    digits_mlp(workdir)

def run_size(n: int, workers: int, cohort_k: int, db_url: str | None, workdir: Path, receive_maximum: int) -> dict:
    from edgehub.hub.fleet.views import StatusFilter
    from edgehub.hub.rollout import machine as rollout
    from edgehub.hub.rollout.machine import RolloutSpec, RolloutState, StageSize
    from edgehub.hub.rollout.ops import counts_of, start_rollout
    from edgehub.hub.sim.run import Simulation, enroll_simulated
    from edgehub.zoo.records import utcnow

    r: dict = {"devices": n, "workers": workers, "cohort_k": cohort_k, "receive_maximum": receive_maximum,
               "database": "postgresql" if db_url else "sqlite"}
    b = Bench(n, workers, cohort_k, db_url, receive_maximum)
    try:
        t = time.perf_counter()
        specs = enroll_simulated(b.paths, n, tags=["fleet"])
        b.broker.reload()
        r["enrol_s"] = time.perf_counter() - t
        b.start_workers()

        t0 = time.perf_counter()
        b.sim = Simulation(b.paths, specs).start()
        r["sim_processes"] = b.sim.processes
        r["connect_s"] = b.wait(lambda: b.sim.stats().get("connected", 0) >= n, 600)
        b.wait(lambda: b.fleet.status_summary()["online"] >= n, 600)
        r["connected_and_reported_s"] = time.perf_counter() - t0

        v1 = publish_model(b, workdir)
        t0 = time.perf_counter()
        b.fleet.deploy("fleet-model", v1.version.version, ["x86-cpu"])
        b.wait(lambda: b.fleet.status_summary()["settled"] >= n, 900, 0.5)
        r["settle_s"] = time.perf_counter() - t0
        r["benchmarks_reported"] = b.sim.stats()["reports_sent"]
        r["variants"] = len(v1.variants)

        publish_model(b, workdir, new_version=True)
        t0 = time.perf_counter()
        started = start_rollout(b.fleet, b.registry, RolloutSpec(model="fleet-model", version=2, selector="fleet",
                                                                 stages=[StageSize(fraction=0.05)]))
        r["rollout_start_s"] = time.perf_counter() - t0
        # The decision itself at this size: one GROUP BY over the members and the pure state machine.
        record = b.fleet.get_rollout(started.id)
        timings = []
        for _ in range(5):
            t = time.perf_counter()
            rollout.decide(RolloutState.model_validate(record.state), counts_of(b.fleet, started.id), utcnow())
            timings.append(time.perf_counter() - t)
        r["rollout_decision_ms"] = sorted(timings)[2] * 1000
        b.wait(lambda: b.fleet.get_rollout(started.id).stage >= 1 or b.fleet.get_rollout(started.id).status != "running",
               600, 0.2)
        r["canary_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        b.wait(lambda: b.fleet.desired_counts("fleet-model").get(2, 0) >= n, 600, 0.5)
        r["rest_targeted_s"] = time.perf_counter() - t1
        b.wait(lambda: b.fleet.get_rollout(started.id).status == "completed", 900, 0.5)
        r["rollout_total_s"] = time.perf_counter() - t0
        r["hub_rollout_step_max_ms"] = b.hub_stats().get("rollout_step_max_s", 0) * 1000

        for limit, key in ((50, "status_view_ms"), (None, "status_all_rows_ms")):
            timings = []
            for _ in range(3):
                t = time.perf_counter()
                b.fleet.status_summary(StatusFilter())
                b.fleet.status_rows(StatusFilter(), limit=limit)
                timings.append(time.perf_counter() - t)
            r[key] = min(timings) * 1000
        t = time.perf_counter()
        cli = subprocess.run([str(Path(sys.executable).parent / "edgehub"), "fleet", "status", "--home",
                              str(b.home), "--json", "--limit", "50"], capture_output=True, text=True, timeout=120,
                             check=True)
        r["status_cli_s"] = time.perf_counter() - t
        assert json.loads(cli.stdout)["summary"]["devices"] == n

        # A hub restart with nothing queued: what it costs on its own (re-publishing every desired
        # state, reconnecting), to tell apart from the per-report cost below.
        r["hub_rss_mb"] = max(b.worker_stats(i).get("peak_rss_mb", 0) for i in range(workers))
        b.stop_workers()
        b.start_workers()
        time.sleep(5)
        idle = b.hub_stats()
        r["restart_overhead_cpu_s"] = idle.get("cpu_s", 0) - idle.get("cpu_at_start_s", 0)

        # Ingest: reports queue in the broker while the hub is down, then it drains them.
        before_events = b.fleet.count_events()
        acked_before = b.sim.stats()["events_acked"]
        b.stop_workers()
        # Rounds of 5 reports per device, device after device: every batch the hub drains touches
        # about 200 devices at every fleet size, so the per-report cost compares like for like.
        rounds = max(1, FLOOD_TOTAL // (FLOOD_PER_DEVICE * n))
        for _ in range(rounds):
            b.sim.flood(FLOOD_PER_DEVICE)
        flood = rounds * FLOOD_PER_DEVICE * n
        b.wait(lambda: b.sim.stats()["events_acked"] >= acked_before + flood, 600, 0.5)
        r["load_average"] = os.getloadavg()[0]
        b.start_workers()  # returns once the worker swept every device and stored its first batch
        # Watched through the workers' own counters: polling COUNT(*) on the events table would
        # compete for the CPU and hold SQLite's WAL from being checkpointed.
        t0, stored0 = time.perf_counter(), b.hub_stats().get("events_stored", 0)
        b.wait(lambda: b.hub_stats().get("events_stored", 0) >= flood, 900, 0.1)
        r["ingest_events"] = flood
        r["ingest_s"] = time.perf_counter() - t0
        r["ingest_per_s"] = (flood - stored0) / r["ingest_s"]
        assert b.fleet.count_events() == before_events + flood
        time.sleep(0.5)  # the workers' stats files trail by up to 0.25 s
        hub = b.hub_stats()
        # The hub's own CPU (all its threads) per stored event, after its start-up sweep: what the
        # rate would be with the cores to itself, whatever else this shared machine runs.
        cpu = hub.get("cpu_s", 0) - hub.get("cpu_at_start_s", 0)
        r["hub_cpu_us_per_event"] = cpu / flood * 1e6
        r["hub_cpu_us_per_event_net"] = (cpu - r["restart_overhead_cpu_s"]) / flood * 1e6
        r["worker_thread_cpu_us_per_event"] = hub.get("worker_cpu_since_start_s", 0) / flood * 1e6
        r["hub_ingest_cpu_s"], r["hub_reconcile_cpu_s"] = hub.get("ingest_s", 0), hub.get("reconcile_s", 0)
        r["avg_batch"] = hub.get("messages", 0) / max(1, hub.get("batches", 0))
        r["hub_rss_after_ingest_mb"] = max(b.worker_stats(i).get("peak_rss_mb", 0) for i in range(workers))
        time.sleep(2)
        sims = b.sim.stats()
        r["events_acked"] = sims["events_acked"]
        r["events_stored"] = b.fleet.count_events()
        r["events_lost"] = sims["events_acked"] - r["events_stored"]
        r["duplicates"] = hub.get("events_duplicate", 0)
        return r
    finally:
        b.close()


def replay(home: Path, per_device: int = FLOOD_PER_DEVICE) -> dict:
    """The ingest phase without the broker, the network thread or the other processes: each device's
    newest report sent again `per_device` times (device after device, batches of 1,000) straight
    through FleetService.handle_batch + reconcile, on a copy of a run's database."""
    import shutil
    import uuid

    from edgehub.hub.control.cohorts import CohortPolicy
    from edgehub.hub.control.selection import Policy
    from edgehub.hub.control.settings import BATCH_MAX, FleetSettings
    from edgehub.hub.control.worker import FleetService
    from edgehub.hub.fleet.store import FleetStore
    from edgehub.hub.home import HubPaths
    from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings
    from edgehub.protocol.topics import Topics
    from edgehub.protocol.wire import encode
    from edgehub.zoo.profiles import load_profiles
    from edgehub.zoo.registry import Registry

    copy = Path(tempfile.mkdtemp(prefix="fleet-replay-"))
    shutil.copy(home / "registry.db", copy / "registry.db")
    paths = HubPaths(copy)
    store, registry = FleetStore(paths.db_url), Registry(paths.db_url)
    settings = FleetSettings(fleet="default", broker_url="mqtt://127.0.0.1:9", username="u", password="p",
                             artifact_base_url="http://127.0.0.1:9/", url_secret=b"b" * 32, policy=Policy(),
                             benchmark=BenchmarkSettings(), share_group="g", cohorts=CohortPolicy())
    service = FleetService(settings, registry, store, load_profiles())  # not started: no broker
    topics, messages = Topics("default"), []
    ids = store.device_ids()
    newest = store.reports_many(ids, {v for vs in store.reported_variants(ids).values() for v in vs})
    for device in ids:
        report = next(iter(newest[device].values()))
        for _ in range(per_device):
            body = report.model_copy(update={"event_id": uuid.uuid4().hex})
            messages.append((topics.events(device), encode(BenchmarkReport.model_validate(body.model_dump()))))
    cpu, wall = time.process_time(), time.perf_counter()
    for k in range(0, len(messages), BATCH_MAX):
        service._reconcile(service.handle_batch(messages[k:k + BATCH_MAX]))  # noqa: SLF001
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    store.close()
    registry.close()
    shutil.rmtree(copy)
    return {"devices": len(ids), "events": len(messages), "events_per_s": len(messages) / wall,
            "cpu_us_per_event": cpu / len(messages) * 1e6}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        home, index, workers, k, port, password, receive_maximum = sys.argv[2:9]
        serve_worker(home, int(index), int(workers), int(k), int(port), password, int(receive_maximum))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--replay":  # --replay HOME...: homes a run left in /tmp
        for home in sys.argv[2:]:
            print(json.dumps(replay(Path(home))), flush=True)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanups: broker, workers, devices
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cohort-k", type=int, default=3)
    parser.add_argument("--db-url")
    parser.add_argument("--receive-maximum", type=int, default=1000,
                        help="the hub's MQTT 5 Receive Maximum (0: the broker's max_inflight_messages)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fleet-scale-model-"))
    make_model(workdir)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"--- {n} devices ---", flush=True)
        r = run_size(n, args.workers, args.cohort_k, args.db_url, workdir, args.receive_maximum)
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    columns = [("devices", "{:d}"), ("connected_and_reported_s", "{:.1f}"), ("settle_s", "{:.1f}"),
               ("ingest_per_s", "{:.0f}"), ("status_view_ms", "{:.0f}"), ("status_all_rows_ms", "{:.0f}"),
               ("status_cli_s", "{:.2f}"), ("rollout_decision_ms", "{:.1f}"), ("rest_targeted_s", "{:.1f}"),
               ("rollout_total_s", "{:.1f}"), ("hub_rss_after_ingest_mb", "{:.0f}"), ("hub_cpu_us_per_event", "{:.0f}"),
               ("hub_cpu_us_per_event_net", "{:.0f}"), ("restart_overhead_cpu_s", "{:.2f}"),
               ("events_lost", "{:d}"), ("load_average", "{:.1f}")]
    print("\n| " + " | ".join(c for c, _ in columns) + " |")
    print("|" + "---:|" * len(columns))
    for r in results:
        print("| " + " | ".join(f.format(r[c]) for c, f in columns) + " |")
    base = results[0]
    for r in results[1:]:
        x = r["devices"] / base["devices"]
        print(f"{r['devices']} vs {base['devices']} devices ({x:.0f}x): settle {r['settle_s'] / base['settle_s']:.1f}x, "
              f"ingest rate {r['ingest_per_s'] / base['ingest_per_s']:.2f}x, status view "
              f"{r['status_view_ms'] / base['status_view_ms']:.1f}x, "
              f"all rows {r['status_all_rows_ms'] / base['status_all_rows_ms']:.1f}x, "
              f"decision {r['rollout_decision_ms'] / base['rollout_decision_ms']:.1f}x, "
              f"RSS {r['hub_rss_after_ingest_mb'] / base['hub_rss_after_ingest_mb']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
