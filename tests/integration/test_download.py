"""The agent's downloader against a real artifact server: resume, verification, refusals."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgehub.agent.download import DownloadError, VerificationError, download, verify_artifact
from edgehub.hub.control.url_signing import sign_artifact_url
from edgehub.hub.serve.artifact_server import ArtifactServer
from edgehub.protocol.manifest import Manifest, TensorSpec
from edgehub.zoo.signing import HubKey
from edgehub.zoo.store import ArtifactStore

SECRET = b"k" * 32
DEVICES = {"dev-a": "pw-a", "dev-b": "pw-b"}
DATA = random.Random(11).randbytes(1_500_000)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = {"backoff_s": 0.01, "timeout_s": 5}


class Hub:
    def __init__(self, root: Path) -> None:
        self.store = ArtifactStore(root)
        self.store.put_bytes(DATA)
        self.cuts: list[int] = []
        self.gets = 0
        self.server = ArtifactServer(self.store, SECRET, lambda u, p: DEVICES.get(u) == p,
                                     fault=self._fault)

    def _fault(self, sha: str) -> int | None:
        self.gets += 1
        return self.cuts.pop(0) if self.cuts else None

    def url(self, device: str = "dev-a", sha: str = SHA, **kw: float) -> str:
        return sign_artifact_url(self.server.base_url, sha, device, SECRET, **kw)

    def fetch(self, dest: Path, device: str = "dev-a", **kw: object) -> Path:
        args: dict = {"sha256": SHA, "size": len(DATA), "username": device,
                      "password": DEVICES[device], **FAST, **kw}
        return download(self.url(device), dest, **args)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "store")
    with h.server:
        yield h


def part_of(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def test_full_download_with_progress(hub: Hub, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    dest = hub.fetch(tmp_path / "dl" / "model.onnx", progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == DATA and not part_of(dest).exists()
    assert seen[-1] == (len(DATA), len(DATA))
    assert hub.server.bytes_sent == len(DATA)


def test_resumes_after_the_server_cuts_the_connection(hub: Hub, tmp_path: Path) -> None:
    hub.cuts = [len(DATA) // 2, 300_000]  # two cuts, then a clean answer
    dest = hub.fetch(tmp_path / "model.onnx")
    assert dest.read_bytes() == DATA and hub.gets == 3
    # Resumed, not restarted: every byte crossed the wire once.
    assert len(DATA) <= hub.server.bytes_sent <= len(DATA) * 1.05


def test_gives_up_after_retries_and_keeps_the_part(hub: Hub, tmp_path: Path) -> None:
    hub.cuts = [1000] * 10
    dest = tmp_path / "model.onnx"
    with pytest.raises(DownloadError, match="giving up after 3 tries") as err:
        hub.fetch(dest, retries=2)
    assert "sig=" not in str(err.value)  # the signed query never appears in errors
    assert not dest.exists() and part_of(dest).stat().st_size == 3000
    hub.cuts = []
    assert hub.fetch(dest).read_bytes() == DATA  # the next run resumes from byte 3000
    assert hub.server.bytes_sent == len(DATA)


def test_part_from_a_previous_run_is_resumed(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    part_of(dest).write_bytes(DATA[:600_000])
    assert hub.fetch(dest).read_bytes() == DATA
    assert hub.server.bytes_sent == len(DATA) - 600_000


def test_part_larger_than_size_restarts(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    part_of(dest).write_bytes(DATA + b"extra")
    assert hub.fetch(dest).read_bytes() == DATA and hub.server.bytes_sent == len(DATA)


def test_corrupt_part_is_rejected_and_removed(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    flipped = bytearray(DATA[:700_000])
    flipped[1234] ^= 0x01
    part_of(dest).write_bytes(bytes(flipped))
    with pytest.raises(VerificationError, match="sha256 mismatch"):
        hub.fetch(dest)
    assert not dest.exists() and not part_of(dest).exists()


def test_store_object_that_does_not_match_its_name(hub: Hub, tmp_path: Path) -> None:
    bad = bytearray(DATA)
    bad[-1] ^= 0xFF
    hub.store.path_for(SHA).write_bytes(bytes(bad))  # the hub's copy rotted on disk
    dest = tmp_path / "model.onnx"
    with pytest.raises(VerificationError):
        hub.fetch(dest)
    assert not dest.exists() and not part_of(dest).exists()


def test_existing_verified_dest_needs_no_network(hub: Hub, tmp_path: Path) -> None:
    dest = hub.fetch(tmp_path / "model.onnx")
    hub.server.stop()
    assert hub.fetch(dest) == dest and dest.read_bytes() == DATA


def test_existing_wrong_dest_is_replaced(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"not the model")
    assert hub.fetch(dest).read_bytes() == DATA


@pytest.mark.parametrize("case,pattern", [
    ("wrong-password", "HTTP 401"),
    ("other-device", "HTTP 403 .*another device"),
    ("expired", "HTTP 403 .*expired"),
    ("tampered-sha", "HTTP 403 .*bad signature"),
])
def test_refused_requests_fail_at_once(hub: Hub, tmp_path: Path, case: str, pattern: str) -> None:
    url = {
        "wrong-password": hub.url(),
        "other-device": hub.url("dev-b"),
        "expired": hub.url(now=time.time() - 100, ttl_s=10),
        "tampered-sha": hub.url().replace(SHA, "0" * 64),
    }[case]
    dest = tmp_path / "model.onnx"
    password = "wrong" if case == "wrong-password" else "pw-a"
    with pytest.raises(DownloadError, match=pattern) as err:
        download(url, dest, sha256=SHA, size=len(DATA), username="dev-a", password=password, **FAST)
    assert type(err.value) is DownloadError and "sig=" not in str(err.value)
    assert not dest.exists() and hub.server.bytes_sent == 0


def test_size_limits(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    with pytest.raises(DownloadError, match="over the 1000 limit"):
        hub.fetch(dest, max_bytes=1000)  # refused before any request
    assert hub.gets == 0
    with pytest.raises(DownloadError, match="announces .* over the 1000 limit"):
        hub.fetch(dest, size=None, max_bytes=1000)
    with pytest.raises(DownloadError, match="announces 1500000 bytes, expected 1499999"):
        hub.fetch(dest, size=len(DATA) - 1)
    assert not dest.exists() and not part_of(dest).exists()  # refused on the headers


def test_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="giving up after 2 tries"):
        download("http://127.0.0.1:9/artifacts/" + SHA, tmp_path / "m", sha256=SHA, size=10,
                 username="dev-a", password="pw-a", retries=1, **FAST)


class _Liar(BaseHTTPRequestHandler):
    """A server that ignores Range, or streams more bytes than it should (no length)."""

    mode = "ignore-range"

    def do_GET(self) -> None:
        self.send_response(200)
        if self.mode == "ignore-range":
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)
        else:  # HTTP/1.0 style: body ends when the connection does
            self.end_headers()
            self.wfile.write(DATA + b"x" * 100_000)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output should show only failures."""


@pytest.fixture
def liar() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_server_answering_200_to_a_range_restarts_from_zero(liar, tmp_path: Path) -> None:
    _Liar.mode = "ignore-range"
    dest = tmp_path / "model.onnx"
    part_of(dest).write_bytes(b"garbage that must not stay in front")
    url = f"http://127.0.0.1:{liar.server_address[1]}/artifacts/{SHA}"
    assert download(url, dest, sha256=SHA, size=len(DATA), username="u", password="p",
                    **FAST).read_bytes() == DATA


def test_server_streaming_too_much_is_refused(liar, tmp_path: Path) -> None:
    _Liar.mode = "too-much"
    dest = tmp_path / "model.onnx"
    url = f"http://127.0.0.1:{liar.server_address[1]}/artifacts/{SHA}"
    with pytest.raises(DownloadError, match="more than the 1500000 bytes"):
        download(url, dest, sha256=SHA, size=len(DATA), username="u", password="p", **FAST)
    assert not dest.exists() and not part_of(dest).exists()


def _manifest(sha: str = SHA, size: int = len(DATA)) -> Manifest:
    return Manifest(variant_id="m-v1-fp32", model="m", version=1, format="onnx",
                    precision="fp32", sha256=sha, size_bytes=size,
                    inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
                    outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
                    created_at="2025-01-01T00:00:00+00:00")


def test_verify_artifact(tmp_path: Path) -> None:
    key = HubKey.load_or_create(tmp_path / "keys")
    other = HubKey.load_or_create(tmp_path / "other-keys")
    path = tmp_path / "model.onnx"
    path.write_bytes(DATA)
    signed = key.sign(_manifest())
    assert verify_artifact(path, signed, key.public_raw).sha256 == SHA

    with pytest.raises(VerificationError, match="manifest rejected: manifest signed by key"):
        verify_artifact(path, other.sign(_manifest()), key.public_raw)
    tampered = signed.model_copy(update={"manifest": _manifest(sha="0" * 64)})
    with pytest.raises(VerificationError, match="manifest rejected: bad signature"):
        verify_artifact(path, tampered, key.public_raw)
    with pytest.raises(VerificationError, match="manifest says 1500001"):
        verify_artifact(path, key.sign(_manifest(size=len(DATA) + 1)), key.public_raw)

    flipped = bytearray(DATA)
    flipped[42] ^= 0x80
    path.write_bytes(bytes(flipped))
    with pytest.raises(VerificationError, match="sha256 mismatch"):
        verify_artifact(path, signed, key.public_raw)
    path.unlink()
    with pytest.raises(VerificationError, match="missing"):
        verify_artifact(path, signed, key.public_raw)


def test_downloader_imports_nothing_from_the_hub_side() -> None:
    code = (
        "import sys, edgehub.agent.download\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'numpy')"
        " or m.startswith(('edgehub.hub', 'edgehub.zoo', 'edgehub.converters'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
