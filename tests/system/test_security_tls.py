"""TLS for MQTT and HTTP: `edgehub hub certs` (or the user's own CA), a hub that serves only TLS to
devices, agents that verify the server, and refusals: a wrong CA, a name the certificate does
not cover, plaintext on the TLS port, a certificate set that does not fit together.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fault_harness import Crafted, MiniHub, agent, enroll, register_crafted, wait_until
from fault_models import good_mlp
from mqtt_helpers import try_connect

from edgehub.agent.config import load_config
from edgehub.agent.download import DownloadError, download
from edgehub.agent.mqtt_link import MqttLink
from edgehub.agent.outbox import Outbox
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.certs import TlsPaths, fingerprint, generate, make_ca, make_server_cert
from edgehub.hub.serve.service import HubOptions, HubService

CLI = [sys.executable, "-m", "edgehub.hub.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_set(folder: Path, hosts: list[str], now=None) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(now=now)
    cert, key = make_server_cert(ca, ca_key, hosts, now=now)
    for name, obj in (("ca.pem", ca), ("server.pem", cert), ("server.key", key)):
        (folder / name).write_bytes(_pem(obj))
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


# ---- making and installing certificates -------------------------------------------------------

def test_hub_certs_makes_a_ca_and_a_server_certificate(tmp_path):
    home = tmp_path / "home"
    result = _cli("hub", "certs", "--home", str(home), "--host", "hub.example", "--host", "10.1.2.3", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    tls = TlsPaths(home)
    assert tls.enabled() and {"hub.example", "10.1.2.3", "localhost", "127.0.0.1"} <= set(info["hosts"])
    for path in (tls.ca_key, tls.server_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.example" in names.get_values_for_type(x509.DNSName)
    # Renewing keeps the CA devices already trust; --force makes a new one.
    assert _cli("hub", "certs", "--home", str(home)).returncode == 0
    assert fingerprint(tls.ca_cert) == info["ca_sha256"]
    assert _cli("hub", "certs", "--home", str(home), "--force").returncode == 0
    assert fingerprint(tls.ca_cert) != info["ca_sha256"]


def test_user_supplied_certificates_are_checked_before_use(tmp_path):
    home = tmp_path / "home"
    ca, cert, key = _write_set(tmp_path / "mine", ["hub.example"])
    other_ca, other_cert, other_key = _write_set(tmp_path / "other", ["hub.example"])
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2000)
    _, old_cert, old_key = _write_set(tmp_path / "old", ["hub.example"], now=old)

    assert _cli("hub", "certs", "--home", str(home), "--ca-cert", str(ca), "--cert", str(cert),
                "--key", str(key)).returncode == 0
    installed = TlsPaths(home).server_cert.read_bytes()
    assert installed == cert.read_bytes() and not TlsPaths(home).ca_key.exists()
    for args, needle in (((ca, cert, other_key), "is not the key of"), ((ca, other_cert, other_key), "is not signed by"),
                         ((ca, old_cert, old_key), "is not valid now")):
        result = _cli("hub", "certs", "--home", str(home), "--ca-cert", str(args[0]), "--cert", str(args[1]),
                      "--key", str(args[2]))
        assert result.returncode == 1 and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert TlsPaths(home).server_cert.read_bytes() == installed  # left as it was
    result = _cli("hub", "certs", "--home", str(home), "--ca-cert", str(ca))
    assert result.returncode == 1 and "together" in result.stderr
    result = _cli("hub", "certs", "--home", str(home))  # would replace the user's set silently
    assert result.returncode == 1 and "--force" in result.stderr
    result = _cli("hub", "serve", "--home", str(tmp_path / "empty"), "--tls")
    assert result.returncode == 1 and "hub certs" in result.stderr


# ---- a TLS hub, end to end --------------------------------------------------------------------

@pytest.fixture
def tls_hub(tmp_path):
    paths = HubPaths.from_home(tmp_path / "home")
    generate(paths.root, ["localhost", "127.0.0.1"])
    service = HubService(paths, options=HubOptions(tick_s=0.3)).start()
    yield service
    service.stop()


def test_agent_over_tls_end_to_end(tls_hub, tmp_path):
    hub = tls_hub
    assert hub.broker.url.startswith("mqtts://") and hub.http.base_url.startswith("https://")
    config, path = enroll(hub.paths, "cam-01", tmp_path / "agents" / "cam-01")
    assert config.broker_url.startswith("mqtts://") and config.ca_file == TlsPaths(hub.paths.root).ca_cert
    # Plain MQTT on the devices' port gets no CONNACK: the listener speaks only TLS.
    assert try_connect(hub.broker.url.replace("mqtts", "mqtt"), "cam-01", config.password.get_secret_value(),
                       timeout=3) != 0
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        wait_until(lambda: (d := hub.fleet.get_device("cam-01")) is not None and d.online, 30, "cam-01 online")
        model, refs = good_mlp(tmp_path / "m.onnx")
        record = register_crafted(hub.paths, hub.registry, "model", [Crafted("fp32", model, references=refs)])[0]
        hub.fleet.deploy("model", 1, ["x86-cpu"])
        wait_until(lambda: hub.fleet.get_device("cam-01").active_variant == record.id, 90,
                   "the variant to be downloaded over HTTPS, benchmarked and activated")
        assert hub.fleet.reports("cam-01", [record.id])[record.id].ok
    finally:
        device.stop()


# ---- refusals ----------------------------------------------------------------------------------

@pytest.fixture
def tls_mini(tmp_path):
    tls = generate(tmp_path / "hub-home", ["localhost", "127.0.0.1"])
    hub = MiniHub(tmp_path / "minihub", tls=tls)
    yield hub
    hub.stop()


def test_a_wrong_ca_is_refused_for_mqtt_and_https(tls_mini, tmp_path):
    wrong_ca, _, _ = _write_set(tmp_path / "wrong", ["localhost"])
    config, path = tls_mini.add_device("cam-01", tmp_path / "agents" / "cam-01", ca_file=wrong_ca)
    link = MqttLink(load_config(path), Outbox(tmp_path / "outbox.db"), on_desired=lambda d: None)
    link.start()
    try:
        wait_until(lambda: link.last_error is not None, 15, "a connection failure")
        assert not link.connected.is_set()
        assert "not trusted" in link.last_error and "self-signed certificate" in link.last_error
    finally:
        link.stop()

    model, _ = good_mlp(tmp_path / "m.onnx")
    candidate = tls_mini.candidate("cam-01", "m-1", model)
    from edgehub.agent.tls import client_context

    started = time.monotonic()
    with pytest.raises(DownloadError, match="not trusted"):
        download(candidate.url, tmp_path / "dl" / "m.onnx", sha256=candidate.sha256, size=candidate.size_bytes,
                 username="cam-01", password=config.password.get_secret_value(),
                 ssl_context=client_context(wrong_ca))
    assert time.monotonic() - started < 5  # refused at once: retrying cannot fix trust
    assert tls_mini.http.bytes_sent == 0
    # With the right CA the same download works.
    got = download(candidate.url, tmp_path / "dl" / "m.onnx", sha256=candidate.sha256, size=candidate.size_bytes,
                   username="cam-01", password=config.password.get_secret_value(),
                   ssl_context=client_context(tls_mini.tls.ca_cert))
    assert got.stat().st_size == candidate.size_bytes


def test_the_real_agent_with_a_wrong_ca_never_connects(tls_mini, tmp_path):
    wrong_ca, _, _ = _write_set(tmp_path / "wrong", ["localhost"])
    _, path = tls_mini.add_device("cam-01", tmp_path / "agents" / "cam-01", ca_file=wrong_ca)
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        wait_until(lambda: "not trusted" in device.log(), 20, "the agent to log the TLS failure")
        assert device.alive()
        states = [t for t, _ in tls_mini.client.received if t.endswith("/cam-01/state")]
        assert states == []  # it never got in, not even with its Last Will
    finally:
        device.stop()


def test_a_certificate_for_another_name_is_refused(tmp_path):
    """The hub's certificate is for hub.example; a device that reaches it as 127.0.0.1 refuses it
    (a man in the middle with a certificate from the same CA, but for another name, fails too)."""
    from edgehub.agent.tls import client_context
    from edgehub.hub.control.url_signing import sign_artifact_url
    from edgehub.hub.serve.artifact_server import ArtifactServer
    from edgehub.hub.serve.certs import install_supplied, server_context
    from edgehub.zoo.store import ArtifactStore

    ca, cert, key = _write_set(tmp_path / "set", ["hub.example"])
    tls = install_supplied(tmp_path / "home", ca, cert, key)
    store = ArtifactStore(tmp_path / "store")
    sha, size = store.put_bytes(b"model bytes" * 100)
    secret = b"k" * 32
    with ArtifactServer(store, secret, lambda u, p: True, ssl_context=server_context(tls)) as server:
        url = sign_artifact_url(server.base_url, sha, "cam-01", secret)
        with pytest.raises(DownloadError, match="not trusted.*(mismatch|match)"):
            download(url, tmp_path / "x.bin", sha256=sha, size=size, username="cam-01", password="pw",
                     ssl_context=client_context(ca))
        assert server.bytes_sent == 0


def test_enroll_ships_the_ca_with_the_agent_config(tmp_path):
    home = tmp_path / "home"
    assert _cli("hub", "certs", "--home", str(home)).returncode == 0
    (tmp_path / "device").mkdir()
    result = _cli("fleet", "enroll", "cam-01", "--profile", "x86-cpu", "--home", str(home),
                  "--out", str(tmp_path / "device" / "cam-01.toml"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    config = load_config(tmp_path / "device" / "cam-01.toml")
    assert config.broker_url.startswith("mqtts://")
    assert config.ca_file == (tmp_path / "device" / "cam-01-ca.pem").resolve() == Path(info["ca_file"])
    assert config.ca_file.read_bytes() == TlsPaths(home).ca_cert.read_bytes()
    assert "ca_file = \"cam-01-ca.pem\"" in (tmp_path / "device" / "cam-01.toml").read_text()  # travels with it


def test_a_running_plain_broker_is_restarted_with_tls_when_tls_is_switched_on(tmp_path):
    """A hub killed while its broker ran plain, restarted after `hub certs`: the broker it finds
    is restarted with the TLS listener (SIGHUP does not reload listeners), not adopted as it is."""
    from edgehub.hub.broker.managed import ManagedBroker
    from edgehub.hub.broker.settings import TLSFiles

    tls = generate(tmp_path / "home", ["localhost", "127.0.0.1"])
    plain = ManagedBroker(tmp_path / "broker", "default")
    plain.files.hub_password()
    plain.start()
    first_pid = plain.pid
    try:
        secured = ManagedBroker(tmp_path / "broker", "default",
                                tls=TLSFiles(tls.ca_cert, tls.server_cert, tls.server_key)).start()
        assert secured.pid != first_pid and secured.url.startswith("mqtts://")
        assert secured.port == plain.port  # devices keep the address they were given
        conf = secured.files.conf_path.read_text()
        assert f"certfile {tls.server_cert}" in conf and f"listener {secured.local_port} 127.0.0.1" in conf
        assert try_connect(secured.local_url, "edgehub-hub", secured.files.hub_password()) == 0
        again = ManagedBroker(tmp_path / "broker", "default",
                              tls=TLSFiles(tls.ca_cert, tls.server_cert, tls.server_key)).start()
        assert again.pid == secured.pid  # same config: adopted, not restarted
    finally:
        ManagedBroker(tmp_path / "broker", "default").stop()
