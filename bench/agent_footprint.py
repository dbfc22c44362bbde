"""What a device pays for the agent: install size without torch, and resident memory.

    .venv/bin/python bench/agent_footprint.py

1. Creates a fresh venv with `pip install '.[agent]'` only and reports its size, and that no
   torch / onnx / SQLAlchemy is in it (the hub venv's size for comparison).
2. Starts a hub (managed Mosquitto) from this venv, enrols a device, runs `edgehub agent run`
   from the agent-only venv, and reads the agent's VmRSS while idle (connected, no model), then
   after a model was published, benchmarked (in child processes) and activated.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def main() -> None:
    from edgehub.agent.config import dump_config
    from edgehub.hub.home import HubPaths
    from edgehub.hub.publish.pipeline import PublishOptions, publish
    from edgehub.hub.publish.release import deploy
    from edgehub.hub.serve.enrollment import enroll_device
    from edgehub.hub.serve.service import HubService

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env_dir = tmp_path / "agent-venv"
        started = time.perf_counter()
        venv.EnvBuilder(with_pip=True).create(env_dir)
        subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", f"{REPO}[agent]"],
                       check=True, cwd=tmp_path)
        install_s = time.perf_counter() - started
        site = next((env_dir / "lib").glob("python*/site-packages"))
        present = [name for name in ("torch", "onnx", "sqlalchemy", "sklearn") if (site / name).exists()]
        hub_site = next((REPO / ".venv" / "lib").glob("python*/site-packages"))
        print(f"agent-only venv: {du_mb(env_dir):.0f} MB (site-packages {du_mb(site):.0f} MB), "
              f"installed in {install_s:.0f} s; hub-side packages present: {present or 'none'}")
        print(f"hub venv site-packages for comparison: {du_mb(hub_site):.0f} MB")

        # A model to publish: a small MLP on scikit-learn's digits.
        import torch
        from sklearn.datasets import load_digits

        from edgehub.converters.torch_export import export_onnx

        digits = load_digits()
        x = (digits.data / 16).astype(np.float32)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
        export_onnx(model, {"x": x[:2]}, tmp_path / "mlp.onnx")
        np.savez(tmp_path / "eval.npz", x=x[:300])

        paths = HubPaths.from_home(tmp_path / "home")
        hub = HubService(paths).start()
        agent = None
        try:
            config = enroll_device(paths, "dev-1", "x86-cpu", data_dir=tmp_path / "agent-data", serve_port=0)
            (tmp_path / "agent.toml").write_text(dump_config(config))
            agent = subprocess.Popen([str(env_dir / "bin" / "edgehub"), "agent", "run", "--config",
                                      str(tmp_path / "agent.toml")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            assert wait(lambda: (d := hub.fleet.get_device("dev-1")) is not None and d.online, 30), "agent never came online"
            time.sleep(5)
            idle = [rss_mb(agent.pid) for _ in range(5) if not time.sleep(0.5)]
            print(f"agent idle RSS (connected, no model): {max(idle):.1f} MB (target < 80 MB)")

            outcome = publish(PublishOptions(source=str(tmp_path / "mlp.onnx"), name="mlp",
                                             eval_path=tmp_path / "eval.npz"), paths, hub.registry)
            deploy(hub.fleet, outcome, ["x86-cpu"])
            assert wait(lambda: hub.fleet.get_device("dev-1").active_variant is not None, 120), "no activation"
            time.sleep(3)
            print(f"agent RSS after benchmarking {len(outcome.variants)} candidates in child processes and "
                  f"activating one: {rss_mb(agent.pid):.1f} MB")
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(timeout=15)
            hub.stop()


if __name__ == "__main__":
    sys.exit(main())
