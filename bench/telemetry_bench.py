"""Field telemetry: what it costs the hub and the device.

    .venv/bin/python bench/telemetry_bench.py [--devices 10000] [--intervals 60,10] [--window 90]
                                              [--serving-requests 3000] [--json out.json]

1. Hub ingest, live: for each interval, a fresh hub home with `HubService` (managed Mosquitto with
   auth + ACL, the fleet loop) and N simulated devices (2 processes, the real protocol through the
   real broker), a real 4-variant model deployed until every device runs its selection; then each
   device sends one synthetic telemetry interval every `interval` seconds (600 real requests a
   minute each, its inputs and outputs in the eval set's bins) for `--window` seconds. Measured in
   that window: telemetry events sent and stored (the backlog at its end says whether the hub keeps
   up), the hub worker thread's CPU time (its own thread: decoding, validating, storing, the
   devices' newest figures) per stored event and as a share of one core, and the database bytes per
   stored interval, hence the storage per device per day (raw; a day later one row per hour remains).
2. Device serving: the agent's `/predict` server (agent/serving.py) on a small ONNX CNN, p50 of
   sequential requests from this process with telemetry recording on and off, interleaved rounds
   (target: within 3%); requests alternate between the two servers, one each in turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgehub.hub.examples.digits import digits_mlp


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def hub_ingest(devices: int, interval_s: float, window_s: float) -> dict:
    from sqlalchemy import func, select

    from edgehub.hub.fleet.schema import TelemetryRow
    from edgehub.hub.home import HubPaths
    from edgehub.hub.publish.pipeline import PublishOptions
    from edgehub.hub.publish.release import publish_and_deploy
    from edgehub.hub.serve.service import HubOptions, HubService
    from edgehub.hub.sim.model import SyntheticDistribution
    from edgehub.hub.sim.run import Simulation, enroll_simulated

    home = Path(tempfile.mkdtemp(prefix="edgehub-telemetry-bench-"))
    onnx, eval_set = digits_mlp(home)
    paths = HubPaths.from_home(home / "home")
    hub = HubService(paths, options=HubOptions(tick_s=0.5, telemetry_interval_s=interval_s)).start()
    sim = None
    try:
        specs = enroll_simulated(paths, devices)
        sim = Simulation(paths, specs, processes=2,
                         distribution=SyntheticDistribution(field_requests_per_min=600)).start()
        publish_and_deploy(PublishOptions(source=str(onnx), name="digits", eval_path=eval_set), paths, hub.registry,
                           hub.fleet, deploy_to_fleet=True)
        started = time.monotonic()
        while hub.fleet.status_summary()["settled"] < devices:
            if time.monotonic() - started > 600:
                raise RuntimeError("not settled after 600 s")
            time.sleep(1.0)

        def stored() -> int:
            with hub.fleet.engine.connect() as conn:
                return conn.scalar(select(func.count()).select_from(TelemetryRow)) or 0

        db = Path(paths.db_url.removeprefix("sqlite:///"))
        time.sleep(interval_s)  # every device has its interval timer running
        before_rows, before_bytes = stored(), db_bytes(db)
        before_cpu, before_sent = hub.service.stats.get("worker_cpu_s", 0.0), sim.stats().get("telemetry_sent", 0)
        time.sleep(window_s)
        sent = sim.stats().get("telemetry_sent", 0) - before_sent
        rows = stored() - before_rows  # stored within the same window: the hub keeps up if close to `sent`
        cpu = hub.service.stats.get("worker_cpu_s", 0.0) - before_cpu
        grown = db_bytes(db) - before_bytes
        per_row = grown / rows if rows else 0.0
        return {"devices": devices, "interval_s": interval_s, "window_s": window_s, "sent": sent, "stored": rows,
                "backlog_at_end": sent - rows, "events_per_s": round(rows / window_s, 1),
                "hub_cpu_us_per_event": round(cpu / rows * 1e6, 1) if rows else None,
                "hub_cpu_share": round(cpu / window_s, 3),
                "db_bytes_per_interval": round(per_row), "raw_mb_per_device_day": round(per_row * 86400 / interval_s / 1e6, 2),
                "hourly_kb_per_device_day": round(per_row * 24 / 1e3, 1)}
    finally:
        if sim is not None:
            sim.stop()
        hub.stop()


CLIENT = """
import http.client, json, sys, time
ports = {"off": int(sys.argv[1]), "on": int(sys.argv[2])}
requests, body = int(sys.argv[3]), open(sys.argv[4], "rb").read()
def once(name):
    conn = http.client.HTTPConnection("127.0.0.1", ports[name])
    started = time.perf_counter()
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    took = (time.perf_counter() - started) * 1000
    conn.close()
    assert response.status == 200, response.status
    return took
for _ in range(200):  # warm-up: sessions loaded, sockets, caches
    once("off"), once("on")
results = {"off": [], "on": []}
for n in range(requests):  # one each in turn, alternating which goes first
    for name in (("off", "on") if n % 2 == 0 else ("on", "off")):
        results[name].append(once(name))
print(json.dumps(results))
"""


def serving_overhead(requests: int) -> dict:
    import torch

    from edgehub.agent.serving import LocalServer, ModelHolder
    from edgehub.agent.telemetry import FieldRecorder
    from edgehub.converters.torch_export import export_onnx
    from edgehub.hub.examples.nets import small_cnn
    from edgehub.hub.publish.field_reference import field_reference
    from edgehub.protocol.files import sha256_file

    out = Path(tempfile.mkdtemp(prefix="edgehub-serving-bench-"))
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    export_onnx(small_cnn().eval(), {"x": x[:2]}, out / "cnn.onnx")
    with torch.no_grad():
        logits = small_cnn().eval()(torch.from_numpy(x)).numpy()
    reference = field_reference({"x": x}, [logits], ["logits"])
    variant = SimpleNamespace(variant_id="cnn-fp32", sha256=sha256_file(out / "cnn.onnx"), format="onnx",
                              path=out / "cnn.onnx")
    body = json.dumps({"inputs": {"x": x[:1].tolist()}}).encode()
    results: dict[str, list[float]] = {"off": [], "on": []}
    servers = {"off": LocalServer(ModelHolder(lambda: variant), port=0),
               "on": LocalServer(ModelHolder(lambda: variant), port=0, recorder=FieldRecorder(reference))}
    for server in servers.values():
        server.start()
    (out / "body.json").write_bytes(body)
    try:
        # The client is its own process, as an application on the device would be.
        done = subprocess.run([sys.executable, "-c", CLIENT, str(servers["off"].port), str(servers["on"].port),
                               str(requests), str(out / "body.json")], capture_output=True, text=True, check=True)
        results.update(json.loads(done.stdout))
    finally:
        for server in servers.values():
            server.stop()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    return {"requests_each": len(results["off"]), "p50_off_ms": round(off, 4), "p50_on_ms": round(on, 4),
            "ratio": round(on / off, 4), "p90_off_ms": round(float(np.quantile(results["off"], 0.9)), 4),
            "p90_on_ms": round(float(np.quantile(results["on"], 0.9)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--intervals", default="60,10")
    parser.add_argument("--window", type=float, default=90.0)
    parser.add_argument("--serving-requests", type=int, default=3000)
    parser.add_argument("--skip-hub", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"hub": [], "serving": serving_overhead(args.serving_requests)}
    s = report["serving"]
    print(f"serving /predict p50: telemetry off {s['p50_off_ms']} ms, on {s['p50_on_ms']} ms, ratio {s['ratio']} "
          f"({s['requests_each']} requests each; target <= 1.03)")
    if not args.skip_hub:
        for interval in (float(v) for v in args.intervals.split(",")):
            r = hub_ingest(args.devices, interval, args.window)
            report["hub"].append(r)
            print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
