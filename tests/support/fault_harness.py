"""Real processes for the fault-injection tests: `edgehub hub serve`, agents, the publisher.

Each helper starts a real process in its own session (so a kill -9 hits exactly it), keeps
its output in a log file, and is stopped at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mqtt_helpers import wait_for

from edgehub.agent.config import AgentConfig, dump_config
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.enrollment import enroll_device
from edgehub.hub.serve.settings import load_settings

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "edgehub.hub.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["ORT_DISABLE_TELEMETRY"] = "1"
    return env


class Proc:
    """A child process with its output in `log_path`."""

    def __init__(self, args: list[str], log_path: Path):
        self.args, self.log_path = args, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                     start_new_session=True)
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class HubProcess(Proc):
    """`edgehub hub serve --home HOME` as a real process."""

    def __init__(self, home: Path, *extra: str):
        self.home = Path(home)
        self.paths = HubPaths.from_home(self.home)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        super().__init__([*CLI, "hub", "serve", "--home", str(self.home), "-v", *extra],
                         self.home / "hub-serve.log")

    def start(self, timeout: float = 60) -> "HubProcess":
        before = self.log().count("connected to the broker")
        super().start()
        up = wait_for(lambda: self.log().count("connected to the broker") > before or not self.alive(), timeout=timeout)
        if not (up and self.alive()):
            log = self.log()[-3000:]
            self.stop()  # a fixture that fails to start gets no teardown: leave nothing running
            raise AssertionError(f"`hub serve` did not come up: {log}")
        return self

    @property
    def broker_dir(self) -> Path:
        return self.paths.root / "broker"

    def broker_pid(self) -> int | None:
        from edgehub.hub.broker.process import running_broker_pid

        return running_broker_pid(self.broker_dir)

    def settings(self):
        return load_settings(self.paths.root)

    def stop(self, timeout: float = 20) -> int | None:
        code = super().stop(timeout)
        from edgehub.hub.broker.managed import ManagedBroker

        # `hub serve` stops its broker on SIGTERM; after a kill -9 the broker is still running.
        pid = self.broker_pid()
        if pid is not None:
            ManagedBroker(self.broker_dir, self.settings().fleet).stop()
        return code

    def fleet(self) -> FleetStore:
        return FleetStore(self.paths.db_url)


def enroll(hub: HubProcess | HubPaths, device_id: str, data_dir: Path, profile: str = "x86-cpu",
           **overrides) -> tuple[AgentConfig, Path]:
    """Enrol a device and write its agent config (with `overrides`) next to its data dir."""
    paths = hub.paths if isinstance(hub, HubProcess) else hub
    config = enroll_device(paths, device_id, profile, data_dir=data_dir, serve_port=0, replace=True)
    config = config.model_copy(update=overrides)
    path = data_dir.parent / f"{device_id}.toml"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config))
    return config, path


def publisher(config_path: Path, count: int, log_path: Path, *args: str) -> Proc:
    return Proc([sys.executable, str(HERE / "fault_publisher.py"), str(config_path), str(count), *args],
                log_path)


def agent(config_path: Path, log_path: Path) -> Proc:
    return Proc([*CLI, "agent", "run", "--config", str(config_path), "-v"], log_path)


def published(proc: Proc) -> int:
    """How many events the publisher has handed to its outbox so far (from its progress lines)."""
    count = 0
    for line in proc.log().splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            count = max(count, data.get("published", 0))
    return count


def final_report(proc: Proc) -> dict:
    """The publisher's last line ({"done": true, "pending": ..., "connects": ...}), or {}."""
    for line in reversed(proc.log().splitlines()):
        if line.startswith('{"done"'):
            return json.loads(line)
    return {}


def stored_ids(fleet: FleetStore, device_id: str) -> list[str]:
    return [e["event_id"] for e in fleet.events(device_id)]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> float:
    """Wait for `predicate`; return the seconds it took, or fail saying `what` did not happen."""
    started = time.monotonic()
    assert wait_for(predicate, timeout=timeout, interval=interval), f"timed out after {timeout}s waiting for {what}"
    return time.monotonic() - started


# ---- crafted variants: model files registered as a model version, signed (or not) -------------

class Crafted:
    """One model file to register: its label, format, references, and how to sign it.

    `signer`: the HubKey to sign with (None: the hub's own key). `tamper`: changes the signed
    manifest after signing (the signature no longer matches). `flip_byte`: the stored artifact
    gets one byte flipped after its sha256 was recorded.
    """

    def __init__(self, label: str, path: Path, format: str = "onnx", references: Path | None = None,
                 signer=None, tamper=None, flip_byte: bool = False):
        self.label, self.path, self.format, self.references = label, Path(path), format, references
        self.signer, self.tamper, self.flip_byte = signer, tamper, flip_byte


def register_crafted(paths: HubPaths, registry, name: str, crafted: list[Crafted], profile: str = "x86-cpu",
                     inputs: list | None = None, outputs: list | None = None):
    """Register `crafted` as version 1 of model `name` (first entry is the parent of the rest)
    and return the VariantRecords. Bypasses the publish pipeline on purpose: these files are
    what a compromised store or a broken converter could hand a device. `inputs`/`outputs`:
    TensorSpecs (default: the fault models' x [batch, 16] -> logits [batch, 8])."""
    from edgehub.protocol.manifest import Manifest, TensorSpec
    from edgehub.zoo.records import ModelVersionRecord, VariantRecord, utcnow
    from edgehub.zoo.signing import HubKey
    from edgehub.zoo.store import ArtifactStore

    store, key = ArtifactStore(paths.artifacts_dir), HubKey.load_or_create(paths.keys_dir)
    inputs = inputs or [TensorSpec(name="x", dtype="float32", shape=["batch", 16])]
    outputs = outputs or [TensorSpec(name="logits", dtype="float32", shape=["batch", 8])]
    records, parent = [], None
    for c in crafted:
        sha, size = store.put_file(c.path)
        refs_sha = store.put_file(c.references)[0] if c.references else None
        variant_id = f"{name}-v1-{c.label}"
        manifest = Manifest(variant_id=variant_id, model=name, version=1, format=c.format, precision="fp32",
                            sha256=sha, size_bytes=size, inputs=inputs, outputs=outputs,
                            references_sha256=refs_sha, recipe=[{"pass": "crafted", "label": c.label}],
                            created_at=utcnow().isoformat())
        signed = (c.signer or key).sign(manifest)
        if c.tamper is not None:
            signed = c.tamper(signed)
            sha, size = signed.manifest.sha256, signed.manifest.size_bytes  # the row follows, as in a compromise
        if c.flip_byte:
            stored = store.path_for(sha)
            os.chmod(stored, 0o644)
            data = bytearray(stored.read_bytes())
            data[len(data) // 2] ^= 0x01
            stored.write_bytes(bytes(data))
        records.append(VariantRecord(id=variant_id, model=name, version=1, parent=parent, label=c.label,
                                     profiles=[profile], recipe=signed.manifest.recipe, format=c.format,
                                     precision="fp32", size_bytes=size, sha256=sha, inputs=inputs,
                                     outputs=outputs, metrics={"accuracy": 0.9, "agreement": 1.0},
                                     references_sha256=refs_sha, signed_manifest=signed))
        parent = parent or variant_id
    version = ModelVersionRecord(name=name, version=1, source_kind="onnx", source_ref=crafted[0].path.name,
                                 source_sha256=records[0].sha256)
    registry.register(version, records)
    return records


def agent_port(proc: Proc, timeout: float = 30) -> int:
    """The agent's local /predict port, from its log."""
    marker = "/predict"
    wait_until(lambda: marker in proc.log(), timeout, "the agent to start serving")
    line = next(li for li in proc.log().splitlines() if marker in li and "http://" in li)
    return int(line.split(marker)[0].rsplit(":", 1)[1])


def http_json(url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# ---- a hub reduced to its wire, for scenarios the real hub would never produce ---------------

class MiniHub:
    """Managed Mosquitto (auth, ACLs), artifact server and the hub's MQTT connection; the test
    writes desired states itself (tampered ones too) and reads the events the agent sends."""

    def __init__(self, root: Path, fleet: str = "default", tls=None, max_bytes_per_s: float | None = None):
        from mqtt_helpers import collect, connect

        from edgehub.hub.broker.managed import ManagedBroker
        from edgehub.hub.broker.settings import TLSFiles
        from edgehub.hub.broker.tools import HUB_USER
        from edgehub.hub.serve.artifact_server import ArtifactServer
        from edgehub.hub.serve.certs import server_context
        from edgehub.protocol.topics import Topics
        from edgehub.zoo.signing import HubKey
        from edgehub.zoo.store import ArtifactStore

        self.root, self.fleet, self.topics, self.tls = Path(root), fleet, Topics(fleet), tls
        self.key = HubKey.load_or_create(self.root / "keys")
        self.store = ArtifactStore(self.root / "artifacts")
        self.secret = os.urandom(32)
        self.passwords: dict[str, str] = {}
        files = TLSFiles(tls.ca_cert, tls.server_cert, tls.server_key) if tls is not None else None
        self.broker = ManagedBroker(self.root / "broker", fleet, tls=files)
        hub_password = self.broker.files.hub_password()
        self.broker.start()
        self.http = ArtifactServer(self.store, self.secret, lambda u, p: self.passwords.get(u) == p,
                                   ssl_context=server_context(tls) if tls is not None else None,
                                   max_bytes_per_s=max_bytes_per_s).start()
        try:
            self.client = connect(self.broker.local_url, HUB_USER, hub_password, timeout=15)
            assert self.client.connect_rc == 0, \
                f"hub client refused ({self.client.connect_rc}): {self.broker.log_tail(10)}"
            self.events = collect(self.client, f"{self.topics.root}/devices/+/events")
        except BaseException:
            self.http.stop()  # no fixture teardown runs for a fixture that failed: leave nothing behind
            self.broker.stop()
            raise

    def add_device(self, device_id: str, data_dir: Path, **overrides) -> tuple[AgentConfig, Path]:
        import secrets

        password = secrets.token_urlsafe(16)
        self.broker.files.set_password(device_id, password)
        self.broker.reload()
        self.passwords[device_id] = password
        config = AgentConfig(device_id=device_id, fleet=self.fleet, profile="x86-cpu", broker_url=self.broker.url,
                             username=device_id, password=password, hub_public_key=self.key.public_b64,
                             ca_file=self.tls.ca_cert if self.tls is not None else None, data_dir=data_dir,
                             serve_port=0)
        config = config.model_copy(update=overrides)
        path = data_dir.parent / f"{device_id}.toml"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_config(config))
        return config, path

    def candidate(self, device_id: str, variant_id: str, model: Path, format: str = "onnx",
                  references: Path | None = None, signer=None, tamper=None, model_name: str = "m"):
        from edgehub.hub.control.url_signing import sign_artifact_url
        from edgehub.protocol.manifest import Manifest, TensorSpec
        from edgehub.protocol.messages import Candidate

        sha, size = self.store.put_file(model)
        refs_sha = self.store.put_file(references)[0] if references else None
        manifest = Manifest(variant_id=variant_id, model=model_name, version=1, format=format, precision="fp32",
                            sha256=sha, size_bytes=size,
                            inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 16])],
                            outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 8])],
                            references_sha256=refs_sha, created_at="2026-01-01T00:00:00+00:00")
        signed = (signer or self.key).sign(manifest)
        if tamper is not None:
            signed = tamper(signed)
        url = sign_artifact_url(self.http.base_url, sha, device_id, self.secret)
        refs_url = sign_artifact_url(self.http.base_url, refs_sha, device_id, self.secret) if refs_sha else None
        return Candidate(variant_id=variant_id, url=url, references_url=refs_url, sha256=sha, size_bytes=size,
                         format=format, precision="fp32", manifest=signed)

    def desired(self, device_id: str, generation: int, candidates: list, activate: str | None = None,
                benchmark=None) -> None:
        from mqtt_helpers import publish

        from edgehub.protocol.messages import BenchmarkSettings, DesiredState
        from edgehub.protocol.wire import encode

        body = DesiredState(device_id=device_id, generation=generation, model="m", version=1,
                            candidates=candidates, activate=activate,
                            benchmark=benchmark or BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3,
                                                                     threads=1, timeout_s=10, memory_limit_mb=512))
        assert publish(self.client, self.topics.desired(device_id), encode(body), retain=True) in (0, 16)

    def desired_slots(self, device_id: str, generation: int, slots: dict[str, tuple[list, str | None]],
                      benchmark=None) -> None:
        """A protocol v2 desired state: model -> (candidates, variant to activate)."""
        from mqtt_helpers import publish

        from edgehub.protocol.messages import BenchmarkSettings, DesiredState, ModelSlot
        from edgehub.protocol.wire import encode

        body = DesiredState(schema_version=2, device_id=device_id, generation=generation, slots=[
            ModelSlot(model=m, version=1, candidates=c, activate=a) for m, (c, a) in slots.items()],
            benchmark=benchmark or BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, threads=1,
                                                     timeout_s=10, memory_limit_mb=512))
        assert publish(self.client, self.topics.desired(device_id), encode(body), retain=True) in (0, 16)

    def event_bodies(self, device_id: str, kind: str | None = None) -> list[dict]:
        topic = self.topics.events(device_id)
        bodies = [json.loads(payload) for t, payload in list(self.events) if t == topic]
        return [b for b in bodies if kind is None or b["kind"] == kind]

    def stop(self) -> None:
        from mqtt_helpers import close

        close(self.client)
        self.http.stop()
        self.broker.stop()
