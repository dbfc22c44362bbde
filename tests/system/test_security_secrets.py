"""No secret is logged: a whole session at debug level (hub, broker, agent, CLI, API, console) leaves
no password, key, URL signature, API token or Authorization header in any log line or command output."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys

from fault_harness import Crafted, HubProcess, agent, register_crafted, wait_until
from fault_models import good_mlp
from mqtt_helpers import try_connect

from edgehub.agent.config import load_config
from edgehub.hub.access.tokens import TokenStore
from edgehub.hub.control.url_signing import load_or_create_secret
from edgehub.hub.fleet.store import FleetStore
from edgehub.zoo.db import make_engine
from edgehub.zoo.registry import Registry

CLI = [sys.executable, "-m", "edgehub.hub.cli"]


def _pem_body(text: str) -> str:
    return "".join(line for line in text.splitlines() if line and not line.startswith("-----"))


def _api_session(paths, api_port: int, outputs: list[str]) -> tuple[str, str]:
    import httpx

    store = TokenStore(make_engine(paths.db_url))
    token, _ = store.create("ops", "operator")
    revoked, _ = store.create("old", "viewer")
    store.revoke("old")
    url = f"http://127.0.0.1:{api_port}"
    with httpx.Client(base_url=url) as client:
        assert client.get("/api/v1/fleet/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/v1/fleet/status", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
        assert client.post("/console/login", data={"token": token}).status_code == 303
        assert client.get("/console").status_code == 200
    far = subprocess.run([*CLI, "fleet", "status", "--json"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "EDGEHUB_HUB": url, "EDGEHUB_TOKEN": token})
    assert far.returncode == 0, far.stderr
    outputs += [far.stdout, far.stderr]
    return token, revoked


def test_a_debug_session_logs_no_secret(tmp_path):
    hub = HubProcess(tmp_path / "home").start()
    device = None
    outputs: list[str] = []
    try:
        paths = hub.paths
        enrolled = subprocess.run([*CLI, "fleet", "enroll", "cam-01", "--profile", "x86-cpu", "--home", str(paths.root),
                                   "--out", str(tmp_path / "cam-01.toml"), "--data-dir", str(tmp_path / "cam-01"),
                                   "--serve-port", "0"], capture_output=True, text=True, timeout=60)
        assert enrolled.returncode == 0, enrolled.stderr
        outputs += [enrolled.stdout, enrolled.stderr]
        config = load_config(tmp_path / "cam-01.toml")
        password = config.password.get_secret_value()
        device = agent(tmp_path / "cam-01.toml", tmp_path / "cam-01.log").start()

        registry, fleet = Registry(paths.db_url), FleetStore(paths.db_url)
        try:
            model, refs = good_mlp(tmp_path / "m.onnx")
            record = register_crafted(paths, registry, "model", [Crafted("fp32", model, references=refs)])[0]
            fleet.deploy("model", 1, ["x86-cpu"])
            wait_until(lambda: (d := fleet.get_device("cam-01")) is not None and d.active_variant == record.id, 90,
                       "the variant active (downloads with signed URLs and Basic auth happened)")
            desired = fleet.desired("cam-01")
        finally:
            registry.close()
            fleet.close()
        assert try_connect(hub.settings().broker_url or f"mqtt://127.0.0.1:{hub.settings().mqtt_port}",
                           "cam-01", "wrong-password") != 0  # a failed login is logged too
        # The API and console: good, wrong and revoked tokens, a console login, a remote CLI command.
        api_token, revoked_token = _api_session(paths, hub.settings().api_port, outputs)
        revoked = subprocess.run([*CLI, "fleet", "revoke", "cam-01", "--home", str(paths.root)],
                                 capture_output=True, text=True, timeout=60)
        outputs += [revoked.stdout, revoked.stderr]
    finally:
        if device is not None:
            device.stop()
        hub.stop()

    url_secret = load_or_create_secret(paths.keys_dir / "url_secret")
    secrets = {
        "device password": password,
        "Basic token": base64.b64encode(f"cam-01:{password}".encode()).decode(),
        "hub MQTT password": (paths.root / "broker" / "hub.secret").read_text().strip(),
        "URL secret (hex)": url_secret.hex(),
        "URL secret (base64)": base64.b64encode(url_secret).decode(),
        "hub signing key": _pem_body((paths.keys_dir / "hub_ed25519.pem").read_text()),
        "API token": api_token,
        "API token secret": api_token.rsplit("_", 1)[1],
        "revoked API token": revoked_token,
        "console CSRF secret": load_or_create_secret(paths.keys_dir / "console_secret").hex(),
    }
    for candidate in desired.candidates:
        sig = re.search(r"sig=([0-9a-f]{64})", candidate.url).group(1)
        secrets[f"URL signature of {candidate.variant_id}"] = sig
    logs = {p.name: p.read_text(errors="replace") for p in
            [hub.log_path, tmp_path / "cam-01.log", paths.root / "broker" / "mosquitto.log",
             paths.root / "broker" / "mosquitto.out"]}
    logs.update({f"cli output {i}": text for i, text in enumerate(outputs)})
    assert sum(len(text) for text in logs.values()) > 2_000  # the session really logged
    assert "benchmarking" in logs["cam-01.log"] and "Sending CONNECT" in logs["cam-01.log"]  # paho at debug
    assert "GET '/artifacts/" in logs[hub.log_path.name]
    for where, text in logs.items():
        for what, secret in secrets.items():
            assert secret and secret not in text, f"{what} found in {where}"
        assert "sig=" not in text.replace("sig=<redacted>", ""), f"a URL signature in {where}"
        assert "Authorization" not in text, f"an Authorization header in {where}"
