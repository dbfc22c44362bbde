"""The hub's HTTP API with the real hub (`HubService`: managed Mosquitto with auth + ACL, fleet loop,
uvicorn), simulated devices and real tokens: 401 for every kind of bad token, every role boundary,
the remote CLI printing what the local one prints (and writing nothing locally), a rollout started
and approved through the API, the audit log, /metrics, OpenAPI, and the wall between device
credentials and API tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from api_hub import ApiHub
from click.testing import CliRunner
from mqtt_helpers import try_connect, wait_for
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from edgehub.hub.access.schema import TokenRow
from edgehub.hub.access.tokens import TokenStore
from edgehub.hub.cli import cli
from edgehub.zoo.records import utcnow

CLI = [sys.executable, "-m", "edgehub.hub.cli"]
DEVICES = 12


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_mlp):
    with ApiHub(tmp_path_factory.mktemp("api") / "home") as hub:
        hub.simulate(DEVICES, tags=["lab"])
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: sum(1 for r in hub.fleet.status_rows() if r["active_variant"]) == DEVICES, 60)
        yield hub


def local(hub, *args) -> dict:
    result = CliRunner().invoke(cli, [*args, "--home", str(hub.paths.root), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def remote(hub, role: str, *args, laptop=None) -> subprocess.CompletedProcess:
    """The CLI in its own process with another home, as on a laptop."""
    env = {**os.environ, "EDGEHUB_HUB": hub.url, "EDGEHUB_TOKEN": hub.tokens[role]}
    if laptop is not None:
        env["EDGEHUB_HOME"] = str(laptop)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_request_without_a_valid_token_gets_401_and_changes_nothing(hub):
    store = TokenStore(hub.service.registry.engine)
    expired, info = store.create("old", "admin")
    with store.sessions.begin() as session:
        session.execute(update(TokenRow).where(TokenRow.id == info.id).values(expires_at=utcnow() - timedelta(1)))
    revoked, _ = store.create("gone", "admin")
    store.revoke("gone")
    aliases = hub.get("viewer", "/api/v1/aliases").json()
    for header in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YWxpY2U6cHc="},
                   {"Authorization": f"Bearer {hub.tokens['admin'][:-2]}xx"},
                   {"Authorization": f"Bearer {expired}"}, {"Authorization": f"Bearer {revoked}"}):
        for method, path, body in (("GET", "/api/v1/fleet/status", None),
                                   ("PUT", "/api/v1/aliases/production", {"model": "digits:1", "group": "lab"})):
            response = hub.http.request(method, path, headers=header, json=body)
            assert response.status_code == 401, (header, path, response.text)
            assert "valid API token" in response.json()["error"] and response.headers["www-authenticate"] == "Bearer"
    assert hub.get("viewer", "/api/v1/aliases").json() == aliases


ENDPOINTS = [  # (method, path, body, the least role allowed)
    ("GET", "/api/v1/fleet/status?limit=2", None, "viewer"),
    ("GET", "/api/v1/devices/sim-00001", None, "viewer"),
    ("GET", "/api/v1/devices/sim-00001/explain", None, "viewer"),
    ("GET", "/api/v1/models/digits", None, "viewer"),
    ("GET", "/api/v1/rollouts", None, "viewer"),
    ("GET", "/api/v1/jobs", None, "viewer"),
    ("GET", "/metrics", None, "viewer"),
    ("POST", "/api/v1/uploads", {"filename": "m.onnx", "size": 10, "sha256": "0" * 63}, "publisher"),
    ("POST", "/api/v1/jobs/publish", {"name": "x", "files": {"eval": "000000000000000000000000"}}, "publisher"),
    ("POST", "/api/v1/rollouts", {"model": "nothere", "group": "lab"}, "operator"),
    ("PUT", "/api/v1/aliases/staging", {"model": "nothere:1", "group": "lab"}, "operator"),
    ("POST", "/api/v1/fleet/tags", {"devices": ["sim-00001"], "add": []}, "operator"),
    ("POST", "/api/v1/rollouts/999/abort", None, "operator"),
    ("GET", "/api/v1/audit", None, "operator"),
]


@pytest.mark.parametrize("method,path,body,least", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_every_role_boundary(hub, method, path, body, least):
    roles = list(hub.tokens)
    for role in roles:
        response = hub.call(role, method, path, json=body)
        if roles.index(role) < roles.index(least):
            assert response.status_code == 403, (role, response.text)
            assert f"has the role {role}" in response.json()["error"] and least in response.json()["error"]
        else:
            assert response.status_code not in (401, 403), (role, response.text)
            assert response.status_code < 500, response.text


def test_refused_and_failed_actions_leave_data_intact_and_the_audit_says_who(hub):
    before = hub.get("viewer", "/api/v1/aliases").json()
    assert hub.call("viewer", "PUT", "/api/v1/aliases/production", json={"model": "digits:1", "group": "lab"}
                    ).status_code == 403
    failed = hub.call("operator", "PUT", "/api/v1/aliases/production", json={"model": "digits:7", "group": "lab"})
    assert failed.status_code == 404 and "no model digits v7" in failed.json()["error"]
    assert hub.get("viewer", "/api/v1/aliases").json() == before
    entries = hub.get("admin", "/api/v1/audit", params={"actor": "token:operator-user"}).json()["entries"]
    mine = [e for e in entries if e["action"] == "alias.set"]
    assert mine and mine[0]["ok"] is False and mine[0]["detail"]["model"] == "digits:7"
    assert not hub.get("admin", "/api/v1/audit", params={"actor": "token:viewer-user"}).json()["entries"]


def test_the_remote_cli_prints_what_the_local_one_does_and_writes_nothing_locally(hub, tmp_path):
    laptop = tmp_path / "laptop-home"
    for args in (("zoo", "show", "digits"), ("zoo", "list"), ("rollout", "alias", "list"),
                 ("fleet", "explain", "sim-00003")):
        far = remote(hub, "viewer", *args, "--json", laptop=laptop)
        assert far.returncode == 0, far.stderr
        assert json.loads(far.stdout) == local(hub, *args), args
    far = json.loads(remote(hub, "viewer", "fleet", "status", "--json", "--group", "lab", laptop=laptop).stdout)
    near = local(hub, "fleet", "status", "--group", "lab")
    assert far["summary"]["devices"] == near["summary"]["devices"] == DEVICES
    assert [d["device"] for d in far["devices"]] == [d["device"] for d in near["devices"]]
    table = remote(hub, "viewer", "fleet", "status", laptop=laptop)
    assert table.returncode == 0 and "sim-00000" in table.stdout and "fleet summary" in table.stdout
    # The same one-line error as on the hub, and the hub's answer.
    bad = remote(hub, "viewer", "zoo", "show", "nothere", laptop=laptop)
    assert bad.returncode == 1 and "no model nothere in the zoo" in bad.stderr and "404" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not laptop.exists()  # no registry, no artifacts, no home on the laptop
    refused = remote(hub, "viewer", "rollout", "pause", "1", laptop=laptop)
    assert refused.returncode == 1 and "needs operator" in refused.stderr
    no_token = subprocess.run([*CLI, "zoo", "list"], env={**os.environ, "EDGEHUB_HUB": hub.url, "EDGEHUB_TOKEN": ""},
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 1 and "needs a token" in no_token.stderr


def test_metrics_openapi_and_json_errors(hub):
    text = hub.get("viewer", "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    devices = {s.labels["profile"]: s.value for s in families["edgehub_devices"].samples}
    assert devices == {"x86-cpu": DEVICES}
    assert sum(s.value for s in families["edgehub_events_ingested"].samples if s.name.endswith("_total")) >= DEVICES
    assert any(s.value > 0 for s in families["edgehub_reconcile_seconds"].samples if s.name.endswith("_count"))
    assert any(s.value > 0 for s in families["edgehub_ingest_lag_seconds"].samples if s.name.endswith("_count"))
    assert {s.labels["state"] for s in families["edgehub_build_jobs"].samples} >= {"queued", "running", "failed"}
    assert hub.http.get("/metrics").status_code == 401

    spec = hub.http.get("/api/v1/openapi.json").json()
    assert {"/api/v1/fleet/status", "/api/v1/jobs/publish", "/api/v1/rollouts/{rollout_id}/{action}"} <= set(spec["paths"])
    missing = hub.get("viewer", "/api/v1/devices/nobody")
    assert missing.status_code == 404 and missing.json() == {"error": "no device 'nobody'; see `edgehub fleet status`"}
    malformed = hub.post("operator", "/api/v1/rollouts", json={"group": "lab", "surprise": 1})
    assert malformed.status_code == 422 and malformed.json()["error"].startswith("invalid request: ")
    assert "\n" not in malformed.json()["error"]
    paged = hub.get("viewer", "/api/v1/fleet/status", params={"limit": 5, "offset": 10}).json()
    assert [d["device"] for d in paged["devices"]] == ["sim-00010", "sim-00011"] and paged["summary"]["devices"] == 12


def test_device_credentials_cannot_call_the_api_and_tokens_cannot_log_in_to_the_broker(hub):
    device, password = next(iter(hub.passwords.items()))
    for header in ({"Authorization": f"Bearer {password}"},
                   {"Authorization": "Basic " + __import__("base64").b64encode(f"{device}:{password}".encode()).decode()}):
        assert hub.http.get("/api/v1/fleet/status", headers=header).status_code == 401
    broker = f"mqtt://127.0.0.1:{hub.service.settings.mqtt_port}"
    assert try_connect(broker, device, password) == 0  # the device's own login works ...
    for role, token in hub.tokens.items():
        assert try_connect(broker, f"{role}-user", token) != 0  # ... an API token's does not
        assert try_connect(broker, device, token) != 0


def test_a_rollout_started_and_approved_through_the_api(hub, tiny_mlp):
    hub.publish(tiny_mlp, new_version=True)
    started = hub.post("operator", "/api/v1/rollouts", json={
        "model": "digits:2", "group": "lab", "canary": "3", "on_success": "approve", "error_threshold": "2"})
    assert started.status_code == 201, started.text
    rid = started.json()["id"]
    assert started.json()["per_stage"] == {"0": 3, "1": DEVICES - 3}

    def status() -> dict:
        return hub.get("viewer", f"/api/v1/rollouts/{rid}").json()

    assert wait_for(lambda: status()["status"] == "waiting", timeout=60), status()
    waiting = status()
    assert waiting["stage"] == 0 and waiting["counts"]["0"]["activated"] == 3 and waiting["error_count"] == 2
    assert waiting["counts"]["1"]["activated"] == 0  # the rest waits for the approval
    assert hub.post("viewer", f"/api/v1/rollouts/{rid}/approve").status_code == 403
    assert hub.post("publisher", f"/api/v1/rollouts/{rid}/approve").status_code == 403
    approved = hub.post("operator", f"/api/v1/rollouts/{rid}/approve")
    assert approved.status_code == 200 and approved.json()["status"] == "running" and approved.json()["stage"] == 1
    again = hub.post("operator", f"/api/v1/rollouts/{rid}/approve")
    assert again.status_code == 400 and "only one waiting for approval" in again.json()["error"]
    assert wait_for(lambda: status()["status"] == "completed", timeout=60), status()
    far = remote(hub, "viewer", "rollout", "status", str(rid), "--json")
    assert json.loads(far.stdout)["status"] == "completed"
    actions = [(e["actor"], e["action"], e["ok"]) for e in hub.get("admin", "/api/v1/audit").json()["entries"]]
    assert ("token:operator-user", "rollout.start", True) in actions
    assert ("token:operator-user", "rollout.approve", True) in actions
    assert ("token:operator-user", "rollout.approve", False) in actions
    audit_cli = subprocess.run([*CLI, "hub", "audit", "--json", "--home", str(hub.paths.root)], capture_output=True,
                               text=True, timeout=60)
    assert any(e["action"] == "rollout.approve" for e in json.loads(audit_cli.stdout)["entries"])


def test_the_api_over_https_with_the_hubs_certificate_and_a_remote_report(tmp_path, tiny_mlp):
    from edgehub.hub.client.remote import RemoteError, RemoteHub
    from edgehub.hub.serve.certs import TlsPaths

    home = tmp_path / "home"
    made = CliRunner().invoke(cli, ["hub", "certs", "--home", str(home)])
    assert made.exit_code == 0, made.output
    ca = TlsPaths(home).ca_cert
    with ApiHub(home) as hub:
        assert hub.url.startswith("https://")
        hub.publish(tiny_mlp)
        with RemoteHub(hub.url, hub.tokens["viewer"], str(ca)) as far:
            assert far.zoo_list()["models"][0]["name"] == "digits"
        with RemoteHub(hub.url, hub.tokens["viewer"]) as untrusted, pytest.raises(RemoteError, match="cannot reach"):
            untrusted.zoo_list()  # a certificate the system does not trust
        env = {**os.environ, "EDGEHUB_HUB": hub.url, "EDGEHUB_TOKEN": hub.tokens["viewer"], "EDGEHUB_CA": str(ca)}
        report = subprocess.run([*CLI, "report", "digits", "--out", str(tmp_path / "rep"), "--json"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert report.returncode == 0, report.stderr
        assert (tmp_path / "rep" / "index.html").is_file() and "latency-accuracy-x86-cpu.png" in report.stdout
        login = hub.http.post("/console/login", data={"token": hub.tokens["viewer"]}, follow_redirects=False)
        assert "secure" in login.headers["set-cookie"].lower() and "httponly" in login.headers["set-cookie"].lower()
