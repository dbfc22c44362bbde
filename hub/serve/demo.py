"""`edgehub demo`: the whole story on localhost with real parts.

Trains a CNN on Fashion-MNIST and an MLP on scikit-learn's digits, starts the hub (managed
Mosquitto with auth and ACLs, artifact server, fleet loop), enrols three devices with different
profiles, runs three real agent processes, publishes both models to every device (two model
slots each), waits for every device to benchmark the candidates and activate each slot's
selected variant, sends `/predict/<model>` traffic to every slot, waits for the field telemetry
of that traffic, prints the fleet, and stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

from edgehub.agent.config import dump_config
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions
from edgehub.hub.publish.release import publish_and_deploy
from edgehub.hub.serve.enrollment import enroll_device
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.protocol.messages import BenchmarkSettings

DEVICES = (("cam-01", "x86-cpu"), ("pi-01", "rpi5"), ("orin-01", "jetson-orin-nano"))
MODELS = ("fmnist-cnn", "digits-mlp")
TELEMETRY_S = 5.0  # field telemetry interval in the demo (60 s by default)
REQUESTS = 40  # /predict calls per device and model


@dataclass
class DemoResult:
    rows: list[dict]
    seconds: float
    test_accuracy: float


def train_model(workdir: Path, console: Console, epochs: int) -> tuple[Path, Path, float]:
    import torch

    from edgehub.converters.torch_export import export_onnx
    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import small_cnn
    from edgehub.hub.examples.training import evaluate_accuracy, train_classifier

    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    torch.manual_seed(0)
    model = small_cnn()
    console.print(f"[bold]1/5[/] training SmallCNN on Fashion-MNIST (60,000 images, {epochs} epoch(s))")
    train_classifier(model, x_train, y_train, epochs=epochs, progress=True, console=console)
    accuracy = evaluate_accuracy(model, x_test, y_test)
    onnx_path, eval_path = workdir / "fmnist-cnn.onnx", workdir / "eval.npz"
    export_onnx(model.eval(), {"x": x_test[:2]}, onnx_path)
    np.savez(eval_path, x=x_test, y=y_test)
    return onnx_path, eval_path, accuracy


def _serve_ports(agents_dir: Path) -> dict[str, int]:
    """device -> the port its agent serves /predict on (it picks a free one and logs it)."""
    ports = {}
    for device_id, _ in DEVICES:
        for line in (agents_dir / f"{device_id}.log").read_text(errors="replace").splitlines():
            if "serving the active models on http://" in line:
                ports[device_id] = int(line.rsplit(":", 1)[1].split("/")[0])
    return ports


def _send_traffic(paths: HubPaths, samples: dict[str, np.ndarray]) -> int:
    """POST REQUESTS single-sample requests to every device's every model; returns the answers."""
    answered = 0
    with httpx.Client(timeout=10) as client:
        for port in _serve_ports(paths.root / "agents").values():
            for model, x in samples.items():
                for i in range(REQUESTS):
                    reply = client.post(f"http://127.0.0.1:{port}/predict/{model}",
                                        json={"inputs": {"x": x[i % len(x)][None].tolist()}})
                    answered += reply.status_code == 200
    return answered


def _start_agents(paths: HubPaths, console: Console) -> list[tuple[str, subprocess.Popen, Path]]:
    agents = []
    agents_dir = paths.root / "agents"
    agents_dir.mkdir(parents=True, exist_ok=True)
    for device_id, profile in DEVICES:
        config = enroll_device(paths, device_id, profile, data_dir=agents_dir / device_id, serve_port=0, replace=True)
        config_path = agents_dir / f"{device_id}.toml"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(dump_config(config))
        log_path = agents_dir / f"{device_id}.log"
        proc = subprocess.Popen([sys.executable, "-m", "edgehub.hub.cli", "agent", "run", "--config", str(config_path)],
                                stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        agents.append((device_id, proc, log_path))
        console.print(f"      agent [bold]{device_id}[/] ({profile}) pid {proc.pid}, log {log_path}")
    return agents


def _stop_agents(agents: list[tuple[str, subprocess.Popen, Path]]) -> None:
    for _, proc, _ in agents:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for _, proc, _ in agents:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _slots_settled(row: dict) -> int:
    return sum(1 for m in row["models"] if m["variant"] and m["variant"] == m["selected_variant"])


def _settled(rows: list[dict]) -> bool:
    return len(rows) == len(DEVICES) and all(r["online"] and _slots_settled(r) == len(MODELS) for r in rows)


def _field_totals(fleet, rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(device, model) -> what the slot's variant served since the demo's traffic began, merged from
    its stored intervals (the status rows show the newest interval only, and the traffic may span two)."""
    from edgehub.hub.fleet.field import merge_rows

    totals = {}
    for r in rows:
        for m in r["models"]:
            if m["variant"]:
                stats = merge_rows(fleet.telemetry(device_id=r["device"], variant_ids=[m["variant"]]))
                totals[(r["device"], m["model"])] = {
                    "requests": stats.requests, "errors": stats.error_count, "p50_ms": stats.latency_ms(0.5),
                    "p99_ms": stats.latency_ms(0.99)}
    return totals


def _with_field_totals(rows: list[dict], totals: dict[tuple[str, str], dict]) -> list[dict]:
    for r in rows:
        for m in r["models"]:
            m["field"] = {**(m["field"] or {}), **totals.get((r["device"], m["model"]), {})}
    return rows


def _keep_running(hub: HubService, paths: HubPaths, console: Console, rows: list[dict]) -> None:
    """`demo --keep`: the fleet table, the console's URL and an admin token, then run until Ctrl-C."""
    from edgehub.hub.access.tokens import TokenStore
    from edgehub.hub.cli.fleet_views import status_table

    token, _ = TokenStore(hub.registry.engine).create("demo-admin", "admin")
    console.print(status_table(rows))
    console.print(f"[bold]The hub keeps running[/] (Ctrl-C stops it):\n"
                  f"  console  {hub.api.base_url}/console   (log in with the token below)\n"
                  f"  API      {hub.api.base_url}/api/v1/openapi.json\n"
                  f"  token    {token}   (admin; only for this demo)\n"
                  f"  CLI      EDGEHUB_HUB={hub.api.base_url} EDGEHUB_TOKEN=<token> edgehub fleet status",
                  highlight=False)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")


def run_demo(home: Path, console: Console, *, epochs: int = 1, timeout_s: float = 300,
             keep: bool = False) -> DemoResult:
    from edgehub.hub.cli.fleet_cmd import status_rows
    from edgehub.hub.examples.digits import digits_mlp

    started = time.perf_counter()
    paths = HubPaths.from_home(home)
    onnx_path, eval_path, accuracy = train_model(paths.root, console, epochs)
    console.print(f"      test accuracy (PyTorch): {accuracy:.4f}")
    digits_path, digits_eval = digits_mlp(paths.root / "digits")
    console.print("      and a second model: an MLP on scikit-learn's digits (8x8 images)")

    console.print("[bold]2/5[/] starting the hub: managed Mosquitto (auth + ACL), artifact server, fleet loop")
    options = HubOptions(benchmark=BenchmarkSettings(time_budget_s=1.0, threads=1), tick_s=0.5,
                         telemetry_interval_s=TELEMETRY_S)
    hub = HubService(paths, options=options).start()
    agents: list = []
    try:
        console.print(f"      broker {hub.service.settings.broker_url}, artifacts {hub.http.base_url}, "
                      f"console {hub.api.base_url}/console")
        console.print("[bold]3/5[/] enrolling three devices and starting their agents")
        agents = _start_agents(paths, console)

        console.print("[bold]4/5[/] publishing both models for their profiles (two model slots per device)")
        profiles = sorted({p for _, p in DEVICES})
        # The demo's shortcut: straight to production (`publish --deploy`); a fleet would use a rollout.
        for name, source, eval_set in (("fmnist-cnn", onnx_path, eval_path), ("digits-mlp", digits_path, digits_eval)):
            outcome = publish_and_deploy(PublishOptions(source=str(source), name=name, eval_path=eval_set,
                                                        profiles=profiles), paths, hub.registry, hub.fleet,
                                         deploy_to_fleet=True).outcome
            console.print(f"      {name}: {len(outcome.variants)} variants built: "
                          + ", ".join(v.label for v in outcome.variants))

        console.print("[bold]5/5[/] waiting for the agents to benchmark, and the hub to select and activate")
        deadline = time.monotonic() + timeout_s
        slots = len(DEVICES) * len(MODELS)

        def check(rows: list[dict], what: str) -> None:
            dead = [d for d, p, _ in agents if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"agent(s) {', '.join(dead)} exited" if dead else f"{what} after {timeout_s:.0f} s"
                raise RuntimeError(f"demo failed: {why}; see the logs under {paths.root / 'agents'}")

        with console.status("benchmarking on the devices ...") as status:
            while True:
                rows = status_rows(paths)
                done = sum(_slots_settled(r) for r in rows)
                status.update(f"benchmarking on the devices ... {done}/{slots} model slots settled")
                if _settled(rows):
                    break
                check(rows, "not settled")
                time.sleep(0.5)
            samples = {"fmnist-cnn": np.load(eval_path)["x"][:REQUESTS],
                       "digits-mlp": np.load(digits_eval)["x"][:REQUESTS]}
            answered = _send_traffic(paths, samples)
            console.print(f"      sent {REQUESTS} /predict/<model> requests to each of the {slots} model slots: "
                          f"{answered} answered")
            while True:
                status.update("waiting for the field telemetry of that traffic ...")
                rows = status_rows(paths)
                totals = _field_totals(hub.fleet, rows)
                if len(totals) == slots and all(t["requests"] >= REQUESTS for t in totals.values()):
                    break
                check(rows, "no field telemetry")
                time.sleep(0.5)
            rows = _with_field_totals(rows, totals)
        result = DemoResult(rows=rows, seconds=time.perf_counter() - started, test_accuracy=accuracy)
        if keep:
            _keep_running(hub, paths, console, rows)
        return result
    finally:
        _stop_agents(agents)
        hub.stop()
