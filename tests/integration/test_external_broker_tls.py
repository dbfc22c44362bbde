"""An external MQTT broker over TLS with a private CA (`hub serve --broker mqtts://... --broker-ca FILE`):
the hub and its worker processes verify the broker with that CA, enrolled devices get the CA with
their agent config; without it the hub does not connect and its log says why; a bad --broker-ca
is a one-line error.

The "external" broker is a ManagedBroker with a TLS listener whose certificate comes from a CA
made here, which neither the system nor the hub's own TLS knows.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from external_broker import operator_broker
from mqtt_helpers import wait_for

from edgehub.agent.config import load_config
from edgehub.hub.broker.managed import ManagedBroker
from edgehub.hub.broker.settings import TLSFiles
from edgehub.hub.broker.tools import BrokerError
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.hub.publish.release import deploy
from edgehub.hub.serve.certs import CertError, generate, make_ca, make_server_cert
from edgehub.hub.serve.enrollment import AGENT_CA_BUNDLE, enroll_device
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.hub.serve.settings import HubSettings, load_settings, save_settings
from edgehub.hub.serve.workers import fleet_settings, read_spec, read_status, worker_user
from edgehub.protocol.messages import BenchmarkSettings

CLI = [sys.executable, "-m", "edgehub.hub.cli"]
FAST_BENCH = BenchmarkSettings(time_budget_s=0.3, warmup_runs=2, min_runs=10, threads=1, timeout_s=60)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def private_ca(tmp_path) -> dict[str, Path]:
    """A private CA and a broker certificate for 127.0.0.1 signed by it (PEM files)."""
    folder = tmp_path / "broker-pki"
    folder.mkdir()
    ca, ca_key = make_ca(common_name="private broker CA")
    cert, key = make_server_cert(ca, ca_key, ["127.0.0.1", "localhost"])
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


@pytest.fixture
def external(tmp_path, private_ca):
    """The 'external' broker: TLS only for clients, with a second hub worker user (edgehub-hub-1)."""
    paths = HubPaths.from_home(tmp_path / "home")  # the hub_home() below
    broker = operator_broker(tmp_path / "external-broker", paths, extra_hub_users=(worker_user(1),),
                             tls=TLSFiles(private_ca["ca"], private_ca["cert"], private_ca["key"]))
    yield broker
    broker.stop()


def hub_home(tmp_path: Path, broker: ManagedBroker, workers: int = 1) -> HubPaths:
    """A hub home with the hub users' passwords on the external broker (what its operator sets up).
    Worker 1's only with 2 workers: a password file of an unused worker makes the hub retire it."""
    paths = HubPaths.from_home(tmp_path / "home")
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "hub-mqtt-password").write_text(broker.files.hub_password() + "\n")
    if workers == 2:
        password = secrets.token_urlsafe(16)
        broker.files.set_password(worker_user(1), password)
        (paths.root / "hub-mqtt-password-1").write_text(password + "\n")
    return paths


def test_hub_workers_and_a_device_trust_the_broker_through_its_private_ca(tmp_path, private_ca, external, tiny_mlp):
    paths = hub_home(tmp_path, external, workers=2)
    assert external.url.startswith("mqtts://")
    settings = HubSettings(broker_url=external.url, broker_ca=str(private_ca["ca"]), workers=2)
    hub = HubService(paths, settings, HubOptions(benchmark=FAST_BENCH, tick_s=0.3)).start()
    agent = None
    try:
        assert hub.broker is None
        assert wait_for(hub.service.connected.is_set, timeout=10)
        assert load_settings(paths.root).broker_ca == str(private_ca["ca"])  # kept for later runs
        # The extra worker is a process of its own: it gets the CA through the spec it reads.
        assert read_spec(paths).broker_ca == str(private_ca["ca"])
        assert fleet_settings(read_spec(paths), 1, "pw", b"k" * 32, None).broker_ca == str(private_ca["ca"])
        assert wait_for(lambda: read_status(paths, 1).get("connected"), timeout=30, interval=0.2), \
            read_status(paths, 1)

        # `fleet enroll` writes the broker's CA next to the agent config.
        device = tmp_path / "device"
        device.mkdir()
        result = _cli("fleet", "enroll", "cam-01", "--profile", "x86-cpu", "--home", str(paths.root),
                      "--out", str(device / "cam-01.toml"), "--data-dir", str(device / "data"),
                      "--serve-port", "0", "--json")
        assert result.returncode == 0, result.stderr
        config = load_config(device / "cam-01.toml")
        assert config.broker_url == external.url and Path(json.loads(result.stdout)["ca_file"]) == config.ca_file
        assert config.ca_file == (device / "cam-01-ca.pem").resolve()
        assert config.ca_file.read_bytes() == private_ca["ca"].read_bytes()
        external.files.set_password("cam-01", config.password.get_secret_value())  # the operator's step
        with open(tmp_path / "cam-01.log", "w") as log:  # the agent keeps its own copy of the handle
            agent = subprocess.Popen([*CLI, "agent", "run", "--config", str(device / "cam-01.toml")], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_for(lambda: (d := hub.fleet.get_device("cam-01")) is not None and d.online, timeout=30,
                        interval=0.2), (tmp_path / "cam-01.log").read_text()[-2000:]

        outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                          paths, hub.registry)
        deploy(hub.fleet, outcome, ["x86-cpu"])

        def settled() -> bool:
            selection = hub.fleet.selection("cam-01")
            return bool(selection and selection.winner
                        and hub.fleet.get_device("cam-01").active_variant == selection.winner)

        assert wait_for(settled, timeout=90, interval=0.3), (tmp_path / "cam-01.log").read_text()[-2000:]
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=15)
        hub.stop()
    assert external.running  # the hub did not stop a broker it does not own


def test_without_the_ca_the_hub_does_not_start_and_says_why(tmp_path, external):
    """The start-up probe of the broker's rights connects first: an untrusted certificate stops the
    hub before anything runs, with the reason and the flag to fix it."""
    paths = hub_home(tmp_path, external)
    hub = HubService(paths, HubSettings(broker_url=external.url), HubOptions(tick_s=0.3))
    with pytest.raises(BrokerError, match="not trusted") as caught:
        hub.start()
    assert "--broker-ca" in str(caught.value) and f"127.0.0.1:{external.port}" in str(caught.value)
    assert hub.service is None and hub.http is None


def test_the_fleet_loop_says_why_a_tls_connection_fails(tmp_path, external, caplog):
    """Past the probe (--insecure-broker), a worker that cannot connect logs the reason, not silence."""
    paths = hub_home(tmp_path, external)
    caplog.set_level(logging.WARNING, logger="edgehub.hub.fleet")
    hub = HubService(paths, HubSettings(broker_url=external.url), HubOptions(tick_s=0.3, insecure_broker=True)).start()
    try:
        assert wait_for(lambda: any("not trusted" in r.getMessage() for r in caplog.records), timeout=10)
        assert not hub.service.connected.wait(2)
        why = next(r.getMessage() for r in caplog.records if "not trusted" in r.getMessage())
        assert "--broker-ca" in why and f"127.0.0.1:{external.port}" in why, why
    finally:
        hub.stop()


def test_an_unusable_broker_ca_stops_the_hub_before_it_starts(tmp_path, external):
    paths = hub_home(tmp_path, external)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    for bad in (tmp_path / "missing.pem", not_pem):
        hub = HubService(paths, HubSettings(broker_url=external.url, broker_ca=str(bad)))
        with pytest.raises(CertError, match="cannot load the broker CA"):
            hub.start()
        assert hub.service is None and hub.http is None


def test_a_bad_broker_ca_file_is_a_one_line_cli_error(tmp_path, private_ca):
    home = tmp_path / "home"
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    cases = [(("--broker", "mqtts://127.0.0.1:1", "--broker-ca", str(tmp_path / "missing.pem")), "no such file"),
             (("--broker", "mqtts://127.0.0.1:1", "--broker-ca", str(not_pem)), "not a PEM certificate"),
             (("--broker", "mqtt://127.0.0.1:1", "--broker-ca", str(private_ca["ca"])), "--broker mqtts://"),
             (("--broker-ca", str(private_ca["ca"])), "--broker mqtts://")]  # the managed broker has its own CA
    for args, needle in cases:
        result = _cli("hub", "serve", "--home", str(home), *args)
        assert result.returncode == 1 and needle in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (home / "hub.json").exists()  # nothing was kept


def test_enroll_ships_the_hubs_ca_and_the_brokers_together(tmp_path, private_ca):
    """A hub with TLS of its own (HTTPS artifacts) on an external private-CA broker: the device needs
    both CAs, in one bundle; without broker_ca it keeps the system's CAs for a public broker."""
    paths = HubPaths.from_home(tmp_path / "home")
    tls = generate(paths.root, ["127.0.0.1"])
    save_settings(paths.root, HubSettings(broker_url="mqtts://broker.example:8883", broker_ca=str(private_ca["ca"])))
    config = enroll_device(paths, "cam-01", "x86-cpu", data_dir=tmp_path / "data")
    assert config.ca_file == paths.root / AGENT_CA_BUNDLE
    subjects = {c.subject for c in x509.load_pem_x509_certificates(config.ca_file.read_bytes())}
    assert subjects == {x509.load_pem_x509_certificate(p.read_bytes()).subject for p in (tls.ca_cert, private_ca["ca"])}

    save_settings(paths.root, HubSettings(broker_url="mqtts://broker.example:8883"))
    assert enroll_device(paths, "cam-02", "x86-cpu", data_dir=tmp_path / "data").ca_file is None
    private_ca["ca"].unlink()
    save_settings(paths.root, HubSettings(broker_url="mqtts://broker.example:8883", broker_ca=str(private_ca["ca"])))
    with pytest.raises(CertError, match="is missing"):
        enroll_device(paths, "cam-03", "x86-cpu", data_dir=tmp_path / "data")


def test_serve_settings_keep_change_and_clear_the_broker(private_ca):
    """What `hub serve` keeps from the last run, and how --broker managed / --broker-ca system undo it."""
    from edgehub.hub.serve.certs import CertError
    from edgehub.hub.serve.settings import serve_settings

    external = serve_settings(HubSettings(workers=2), broker_url="mqtts://broker.example:8883",
                              broker_ca=str(private_ca["ca"]), http_port=None)
    assert (external.broker_url, external.broker_ca, external.workers) == ("mqtts://broker.example:8883",
                                                                           str(private_ca["ca"]), 2)
    assert serve_settings(external, fleet="lab") == external.model_copy(update={"fleet": "lab"})  # kept
    system = serve_settings(external, broker_ca="system")
    assert system.broker_url == external.broker_url and system.broker_ca is None
    managed = serve_settings(external, broker_url="managed")
    assert managed.broker_url is None and managed.broker_ca is None and managed.workers == 2
    with pytest.raises(CertError, match="--broker mqtts://"):
        serve_settings(external, broker_url="managed", broker_ca=str(private_ca["ca"]))
    assert external.broker_ca == str(private_ca["ca"])  # the settings given are not changed
