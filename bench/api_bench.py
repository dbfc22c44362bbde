"""API and console latency at fleet scale: the fleet overview and a device page with 10,000 simulated
devices connected to a real hub.

    .venv/bin/python bench/api_bench.py [--devices 10000] [--requests 200] [--json out.json]

On a fresh hub home: `HubService` (managed Mosquitto with auth + ACL, the fleet loop, the API and
console on uvicorn), N simulated devices in 2 processes on the real broker, a real model (an MLP on
scikit-learn digits, 4 variants) deployed until every device runs its selected variant. Then, with
the devices still connected, sequential requests from this process (one client, keep-alive) to:

- the fleet overview: `GET /api/v1/fleet/status?limit=50` (summary counts over every device and the
  first 50 rows) and the console page `GET /console` (the same, rendered);
- a device page: `GET /api/v1/devices/<id>` and `GET /console/devices/<id>` for random devices;
- the last page of the console's device table (an offset of N - 50).

Targets (issue 15): overview p95 under 200 ms, device page p95 under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from edgehub.hub.examples.digits import digits_mlp


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(samples), "p50_ms": round(statistics.median(ordered), 1), "p95_ms": round(pick(0.95), 1),
            "max_ms": round(ordered[-1], 1)}


def timed(client, path: str, headers: dict) -> float:
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    took = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import httpx

    from edgehub.hub.access.tokens import TokenStore
    from edgehub.hub.home import HubPaths
    from edgehub.hub.publish.pipeline import PublishOptions
    from edgehub.hub.publish.release import publish_and_deploy
    from edgehub.hub.serve.service import HubOptions, HubService
    from edgehub.hub.sim.run import Simulation, enroll_simulated

    home = Path(tempfile.mkdtemp(prefix="edgehub-api-bench-"))
    paths = HubPaths.from_home(home / "home")
    onnx, eval_set = digits_mlp(home)
    hub = HubService(paths, options=HubOptions(tick_s=0.5)).start()
    sim = None
    try:
        started = time.perf_counter()
        specs = enroll_simulated(paths, args.devices, tags=["lab"])
        sim = Simulation(paths, specs, processes=2).start()
        publish_and_deploy(PublishOptions(source=str(onnx), name="digits", eval_path=eval_set), paths, hub.registry,
                           hub.fleet, deploy_to_fleet=True)
        while True:
            summary = hub.fleet.status_summary()
            if summary["settled"] >= args.devices:
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"not settled after 600 s: {summary['settled']} of {args.devices}")
            time.sleep(1.0)
        settle_s = time.perf_counter() - started
        token, _ = TokenStore(hub.registry.engine).create("bench", "viewer")
        headers = {"Authorization": f"Bearer {token}"}
        ids = [s.id for s in specs]
        rng = random.Random(0)
        results: dict[str, list[float]] = {k: [] for k in ("api overview", "console overview", "api device",
                                                           "console device", "console last page")}
        with httpx.Client(base_url=hub.api.base_url, timeout=30) as client:
            for path in ("/api/v1/fleet/status?limit=50", "/console", f"/api/v1/devices/{ids[0]}"):
                timed(client, path, headers)  # warm: imports, templates, the first connection
            for _ in range(args.requests):
                device = rng.choice(ids)
                results["api overview"].append(timed(client, "/api/v1/fleet/status?limit=50", headers))
                results["console overview"].append(timed(client, "/console", headers))
                results["api device"].append(timed(client, f"/api/v1/devices/{device}", headers))
                results["console device"].append(timed(client, f"/console/devices/{device}", headers))
                results["console last page"].append(timed(client, f"/console?page={args.devices // 50}", headers))
        report = {"devices": args.devices, "settle_s": round(settle_s, 1),
                  "results": {k: percentiles(v) for k, v in results.items()}}
    finally:
        if sim is not None:
            sim.stop()
        hub.stop()
    print(f"{args.devices} simulated devices settled in {report['settle_s']} s; {args.requests} requests each, "
          "sequential, devices connected")
    print(f"{'request':<20} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, r in report["results"].items():
        print(f"{name:<20} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8}")
    overview = max(report["results"]["api overview"]["p95_ms"], report["results"]["console overview"]["p95_ms"])
    device = max(report["results"]["api device"]["p95_ms"], report["results"]["console device"]["p95_ms"])
    print(f"target overview p95 < 200 ms: {overview} ms ({'met' if overview < 200 else 'MISSED'}); "
          f"device page p95 < 100 ms: {device} ms ({'met' if device < 100 else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
