"""`edgehub demo`: the whole story on localhost with real parts.

Trains a CNN on Fashion-MNIST, starts the hub (managed Mosquitto with auth and ACLs, artifact
server, fleet loop), enrols three devices with different profiles, runs three real agent
processes, publishes the model, waits for every device to benchmark its candidates and activate
the selected variant, prints the fleet, and stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def _settled(rows: list[dict]) -> bool:
    return len(rows) == len(DEVICES) and all(
        r["online"] and r["selected_variant"] and r["active_variant"] == r["selected_variant"] for r in rows)


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

    started = time.perf_counter()
    paths = HubPaths.from_home(home)
    onnx_path, eval_path, accuracy = train_model(paths.root, console, epochs)
    console.print(f"      test accuracy (PyTorch): {accuracy:.4f}")

    console.print("[bold]2/5[/] starting the hub: managed Mosquitto (auth + ACL), artifact server, fleet loop")
    options = HubOptions(benchmark=BenchmarkSettings(time_budget_s=1.0, threads=1), tick_s=0.5)
    hub = HubService(paths, options=options).start()
    agents: list = []
    try:
        console.print(f"      broker {hub.service.settings.broker_url}, artifacts {hub.http.base_url}, "
                      f"console {hub.api.base_url}/console")
        console.print("[bold]3/5[/] enrolling three devices and starting their agents")
        agents = _start_agents(paths, console)

        console.print("[bold]4/5[/] publishing the model for their profiles")
        profiles = sorted({p for _, p in DEVICES})
        # The demo's shortcut: straight to production (`publish --deploy`); a fleet would use a rollout.
        outcome = publish_and_deploy(PublishOptions(source=str(onnx_path), name="fmnist-cnn", eval_path=eval_path,
                                                    profiles=profiles), paths, hub.registry, hub.fleet,
                                     deploy_to_fleet=True).outcome
        console.print(f"      {len(outcome.variants)} variants built: " + ", ".join(v.label for v in outcome.variants))

        console.print("[bold]5/5[/] waiting for the agents to benchmark, and the hub to select and activate")
        deadline = time.monotonic() + timeout_s
        with console.status("benchmarking on the devices ...") as status:
            while True:
                rows = status_rows(paths)
                done = sum(1 for r in rows if r["active_variant"] and r["active_variant"] == r["selected_variant"])
                status.update(f"benchmarking on the devices ... {done}/{len(DEVICES)} settled")
                if _settled(rows):
                    break
                dead = [d for d, p, _ in agents if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    why = f"agent(s) {', '.join(dead)} exited" if dead else f"not settled after {timeout_s:.0f} s"
                    raise RuntimeError(f"demo failed: {why}; see the logs under {paths.root / 'agents'}")
                time.sleep(0.5)
        result = DemoResult(rows=rows, seconds=time.perf_counter() - started, test_accuracy=accuracy)
        if keep:
            _keep_running(hub, paths, console, rows)
        return result
    finally:
        _stop_agents(agents)
        hub.stop()
