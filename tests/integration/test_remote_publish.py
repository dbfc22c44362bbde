"""Remote publish against the real hub: the CLI in another process with another home uploads the
model and data, the hub builds in its own job process, the CLI follows and prints what a local
publish prints; a PyTorch factory module only the laptop has; roles; a corrupt model's one-line
error; uploads that resume, are checked and limited; a job cancelled; a hub restart mid-build."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from api_hub import ApiHub
from click.testing import CliRunner
from mqtt_helpers import wait_for

from edgehub.hub.cli import cli
from edgehub.hub.serve.settings import HubSettings
from edgehub.zoo.store import ArtifactStore

CLI = [sys.executable, "-m", "edgehub.hub.cli"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with ApiHub(tmp_path_factory.mktemp("remote") / "home", HubSettings(max_upload_mb=1)) as hub:
        hub.simulate(4, tags=["lab"])
        yield hub


def remote(hub, role: str, *args, laptop, extra_env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEHUB_HUB": hub.url, "EDGEHUB_TOKEN": hub.tokens[role], "EDGEHUB_HOME": str(laptop),
           **(extra_env or {})}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_remote_publish_builds_on_the_hub_and_registers_only(hub, tiny_mlp, tmp_path):
    laptop = tmp_path / "laptop"
    far = remote(hub, "publisher", "publish", str(tiny_mlp["onnx"]), "--name", "remote-digits", "--eval",
                 str(tiny_mlp["eval"]), "--json", laptop=laptop)
    assert far.returncode == 0, far.stderr[-3000:]
    data = json.loads(far.stdout)
    assert data["model"] == "remote-digits" and data["version"] == 1 and not data["already_published"]
    labels = {v["label"] for v in data["variants"]}
    assert {"fp32", "int8-dynamic"} <= labels and data["rollouts"] == [] and data["deployed_profiles"] == []
    stored = hub.registry.variants("remote-digits", 1)
    assert {v.id for v in stored} == {v["id"] for v in data["variants"]}
    store = ArtifactStore(hub.paths.artifacts_dir)
    assert all(hashlib.sha256(store.path_for(v.sha256).read_bytes()).hexdigest() == v.sha256 for v in stored)
    assert hub.fleet.deployment_for("x86-cpu") is None  # registered, not deployed
    assert not laptop.exists()
    job = hub.get("viewer", "/api/v1/jobs").json()["jobs"][0]
    assert job["state"] == "succeeded" and job["owner"] == "token:publisher-user" and job["name"] == "remote-digits"
    # The table path, and the same content published again: nothing is uploaded twice, nothing built.
    again = remote(hub, "publisher", "publish", str(tiny_mlp["onnx"]), "--name", "remote-digits", "--eval",
                   str(tiny_mlp["eval"]), laptop=laptop)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already published with this content" in again.stdout and "int8-dynamic" in again.stdout
    assert "devices get it through a rollout" in again.stdout


def test_deploying_or_rolling_out_needs_an_operator(hub, tiny_mlp, tmp_path):
    args = ("publish", str(tiny_mlp["onnx"]), "--name", "rolled", "--eval", str(tiny_mlp["eval"]), "--json")
    refused = remote(hub, "publisher", *args, "--rollout", "canary=1,group=lab", laptop=tmp_path / "l")
    assert refused.returncode == 1 and "starting a rollout needs operator" in refused.stderr
    assert hub.registry.latest_version("rolled") is None
    done = remote(hub, "operator", *args, "--rollout", "canary=1,group=lab,on_success=approve", laptop=tmp_path / "l")
    assert done.returncode == 0, done.stderr[-2000:]
    (rollout,) = json.loads(done.stdout)["rollouts"]
    assert rollout["group"] == "lab" and rollout["members"] == 4 and rollout["per_stage"] == {"0": 1, "1": 3}
    status = hub.get("viewer", f"/api/v1/rollouts/{rollout['id']}").json()
    assert status["model"] == "rolled" and status["on_success"] == "approve"


def test_a_factory_module_only_the_laptop_has_is_sent_along(hub, tmp_path):
    import torch

    laptop_code = tmp_path / "code"
    laptop_code.mkdir()
    (laptop_code / "laptop_nets_x1.py").write_text(textwrap.dedent('''
        import torch

        def mlp():
            return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    '''))
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=net(torch.from_numpy(x)).argmax(1).numpy())
    far = remote(hub, "publisher", "publish", "laptop_nets_x1:mlp", "--weights", str(tmp_path / "w.pt"), "--name",
                 "factory", "--eval", str(tmp_path / "eval.npz"), "--json", laptop=tmp_path / "l",
                 extra_env={"PYTHONPATH": str(laptop_code)})
    assert far.returncode == 0, far.stderr[-3000:]
    data = json.loads(far.stdout)
    assert data["variants"] and hub.registry.get_version("factory", 1).source_kind == "torch"
    fp32 = next(v for v in data["variants"] if v["label"] == "fp32")
    assert fp32["metrics"]["accuracy"] == pytest.approx(1.0)  # the uploaded weights, not a fresh init


def test_a_corrupt_model_gets_the_local_one_line_error_and_registers_nothing(hub, tiny_mlp, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    args = ["publish", str(bad), "--name", "broken", "--eval", str(tiny_mlp["eval"])]
    near = CliRunner().invoke(cli, [*args, "--home", str(tmp_path / "local")])
    assert near.exit_code == 1
    message = near.output.strip().removeprefix("error: ")
    far = remote(hub, "publisher", *args, laptop=tmp_path / "l")
    assert far.returncode == 1 and message in far.stderr, (message, far.stderr)
    assert len([line for line in far.stderr.splitlines() if line.startswith("error:")]) == 1
    assert hub.registry.latest_version("broken") is None


def test_uploads_over_http_resume_are_checked_and_limited(hub):
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    up = hub.post("publisher", "/api/v1/uploads", json={"filename": "m.onnx", "size": len(data), "sha256": sha})
    assert up.status_code == 201 and up.json()["offset"] == 0
    uid = up.json()["id"]

    def patch(offset: int, chunk: bytes, role: str = "publisher"):
        return hub.call(role, "PATCH", f"/api/v1/uploads/{uid}", content=chunk, headers={"Upload-Offset": str(offset)})

    assert patch(0, data[:100_000]).json()["offset"] == 100_000
    stale = patch(0, data[:100_000])  # a client that lost the answer sends it again
    assert stale.status_code == 409 and stale.headers["upload-offset"] == "100000"
    assert hub.get("publisher", f"/api/v1/uploads/{uid}").json()["offset"] == 100_000
    assert hub.get("operator", f"/api/v1/uploads/{uid}").status_code == 404  # another token's upload
    cut = hub.post("publisher", "/api/v1/jobs/publish", json={"name": "cut", "files": {"source": uid, "eval": uid}})
    assert cut.status_code == 409 and "incomplete" in cut.json()["error"]
    assert patch(100_000, data[100_000:]).json()["complete"] is True
    too_big = hub.post("publisher", "/api/v1/uploads", json={"filename": "big.onnx", "size": 2 * 1024 * 1024,
                                                            "sha256": sha})
    assert too_big.status_code == 413 and "upload limit" in too_big.json()["error"]
    lying = hub.post("publisher", "/api/v1/uploads", json={"filename": "x.npz", "size": 10, "sha256": sha}).json()
    corrupt = hub.call("publisher", "PATCH", f"/api/v1/uploads/{lying['id']}", content=b"0123456789",
                       headers={"Upload-Offset": "0"})
    assert corrupt.status_code == 422 and "do not match the sha256" in corrupt.json()["error"]
    assert hub.get("publisher", f"/api/v1/uploads/{lying['id']}").status_code == 404
    assert hub.registry.latest_version("cut") is None


def _queue(hub, tiny_mlp, name: str, profiles: list[str]) -> int:
    from edgehub.hub.client.remote import RemoteHub

    with RemoteHub(hub.url, hub.tokens["publisher"]) as far:
        files = {"source": far.upload(tiny_mlp["onnx"]), "eval": far.upload(tiny_mlp["eval"])}
        job = far._call("POST", "/jobs/publish", json={"name": name, "files": files, "profiles": profiles})
    return job["id"]


def test_a_running_build_is_cancelled(hub, tiny_mlp):
    job_id = _queue(hub, tiny_mlp, "cancelled", ["x86-cpu", "rpi5", "jetson-orin"])
    assert wait_for(lambda: hub.get("viewer", f"/api/v1/jobs/{job_id}").json()["state"] == "running", 30)
    assert hub.post("viewer", f"/api/v1/jobs/{job_id}/cancel").status_code == 403
    assert hub.post("operator", f"/api/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    assert wait_for(lambda: hub.get("viewer", f"/api/v1/jobs/{job_id}").json()["state"] == "cancelled", 30)
    assert hub.registry.latest_version("cancelled") is None


def test_a_hub_restart_during_a_build_runs_it_again(tmp_path, tiny_mlp):
    home = tmp_path / "home"
    hub = ApiHub(home)
    try:
        job_id = _queue(hub, tiny_mlp, "restarted", ["x86-cpu", "rpi5"])
        assert wait_for(lambda: hub.get("viewer", f"/api/v1/jobs/{job_id}").json()["state"] == "running", 30)
    finally:
        hub.close()  # kills the build mid-way, as a crash would
    again = ApiHub(home)
    try:
        def job() -> dict:
            return again.get("viewer", f"/api/v1/jobs/{job_id}").json()

        assert wait_for(lambda: job()["state"] in ("succeeded", "failed"), 180), job()
        assert job()["state"] == "succeeded" and job()["attempts"] == 2, job()
        events = again.get("viewer", f"/api/v1/jobs/{job_id}/events").json()["events"]
        assert any("hub restarted during the build: queued again" in e["data"].get("message", "") for e in events)
        assert again.registry.latest_version("restarted") is not None
    finally:
        again.close()
