"""Property-based fuzzing of the HTTP endpoints: the agent's local POST /predict (a real model on
ONNX Runtime) and the hub's HTTPS artifact server at the TLS layer. Requests are written byte
for byte to a socket, so nothing a client library would refuse is out of reach. The properties:
a response with a clear status (JSON error for the agent), no crash, no change to what is
served, and the next well-formed request still works. (The artifact server's HTTP layer is
fuzzed in test_artifact_server.py.)
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest
from fault_models import good_mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgehub.agent.local_state import InstalledVariant
from edgehub.agent.serving import MAX_REQUEST_BYTES, LocalServer, ModelHolder
from edgehub.agent.tls import client_context
from edgehub.hub.control.url_signing import sign_artifact_url
from edgehub.hub.serve.artifact_server import ArtifactServer
from edgehub.hub.serve.certs import generate, server_context
from edgehub.protocol.files import sha256_file
from edgehub.protocol.manifest import Manifest, SignedManifest
from edgehub.zoo.store import ArtifactStore

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AGENT_STATUSES = {200, 400, 404, 411, 413, 414, 431, 501, 503}


@pytest.fixture(scope="module")
def predict(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model, _ = good_mlp(root / "mlp.onnx")
    sha = sha256_file(model)
    manifest = Manifest(variant_id="m-fp32", model="m", version=1, format="onnx", precision="fp32", sha256=sha,
                        size_bytes=model.stat().st_size, inputs=[], outputs=[], created_at="2026-01-01")
    variant = InstalledVariant(variant_id="m-fp32", sha256=sha, format="onnx", path=model,
                               manifest=SignedManifest(manifest=manifest, signature="", key_id=""))
    server = LocalServer(ModelHolder(lambda: variant), port=0)
    server.start()
    yield server.port, variant
    server.stop()


def _raw(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send `data`, close our side, read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # a body shorter than its Content-Length ends here
        except OSError:
            pass  # the server answered (an error) and closed before reading all we had to send
        response = http.client.HTTPResponse(sock, method=data.split(b" ", 1)[0].decode("latin-1"))
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def _request(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _valid_body(rows: int = 1) -> bytes:
    return json.dumps({"inputs": {"x": [[0.25] * 16] * rows}}).encode()


_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
_numbers = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=False), st.sampled_from([1e308, -1e308, 2**70]))
_arrays = st.recursive(st.lists(_numbers, max_size=20), lambda inner: st.lists(inner, max_size=4), max_leaves=64)


@st.composite
def _bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "shape", "values", "json", "bytes", "deep", "keys", "big-batch"]))
    if kind == "valid":
        return _valid_body(draw(st.integers(1, 4)))
    if kind == "shape":
        return json.dumps({"inputs": {"x": draw(_arrays)}}).encode()
    if kind == "values":
        return json.dumps({"inputs": {"x": [[draw(st.one_of(_numbers, _text, st.none(), st.booleans()))] * 16]}}).encode()
    if kind == "json":
        return json.dumps(draw(st.recursive(st.none() | _numbers | _text,
                                            lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
                                            max_leaves=10))).encode()
    if kind == "deep":
        depth = draw(st.integers(100, 100_000))
        return b'{"inputs": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    if kind == "keys":
        return json.dumps({"inputs": {draw(_text): [[1.0] * 16]}, draw(_text): 1}).encode()
    if kind == "big-batch":
        return json.dumps({"inputs": {"x": [[1.0] * 16] * draw(st.integers(1000, 20000))}}).encode()
    return draw(st.binary(max_size=500))


@st.composite
def _requests(draw) -> bytes:
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "BREW"]))
    paths = st.sampled_from(["/predict"] * 6 + ["/health", "/", "/predict?x=1", "/../etc/passwd"])
    path = draw(paths | _text.map(lambda t: "/" + t.replace(" ", "")))
    body = draw(_bodies())
    length = draw(st.sampled_from(["right"] * 5 + ["none", "text", "negative", "huge", "twice", "short", "long", "chunked"]))
    headers: list[tuple[str, str]] = []
    if length == "right":
        headers.append(("Content-Length", str(len(body))))
    elif length == "text":
        headers.append(("Content-Length", draw(_text)))
    elif length == "negative":
        headers.append(("Content-Length", "-5"))
    elif length == "huge":
        headers.append(("Content-Length", str(MAX_REQUEST_BYTES + draw(st.integers(1, 10**30)))))
    elif length == "twice":
        headers += [("Content-Length", str(len(body))), ("Content-Length", "3")]
    elif length == "short":
        headers.append(("Content-Length", str(max(0, len(body) - 3))))
    elif length == "long":
        headers.append(("Content-Length", str(len(body) + 50)))
    elif length == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    if draw(st.booleans()):
        headers.append(("Content-Type", draw(_text)))
    return _request(method, path, headers, body)


@FUZZ
@given(request=_requests())
def test_predict_answers_every_request_with_a_clear_status(predict, request):
    port, variant = predict
    status, headers, body = _raw(port, request)
    assert status in AGENT_STATUSES, (status, body[:200])
    if not request.startswith(b"HEAD"):
        reply = json.loads(body)
        if status == 200:
            assert reply.get("variant") == "m-fp32" or "active_variant" in reply
        else:
            assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"]
    # Still serving, the same model.
    status, _, body = _raw(port, _request("POST", "/predict", [("Content-Length", str(len(_valid_body())))],
                                          _valid_body()))
    assert status == 200 and json.loads(body)["variant"] == variant.variant_id


def test_predict_answers_for_a_known_bad_case_each(predict):
    port, _ = predict

    def post(body: bytes, *extra: tuple[str, str]) -> tuple[int, str]:
        status, _, raw = _raw(port, _request("POST", "/predict", [("Content-Length", str(len(body))), *extra], body))
        return status, json.loads(raw).get("error", "")

    assert post(b"not json") == (400, "body is not JSON (JSONDecodeError)")
    assert post(b"[" * 200_000 + b"]" * 200_000)[0] == 400  # nesting far past the recursion limit
    assert post(json.dumps({"inputs": {"x": [[1.0] * 15]}}).encode())[1].startswith("input x has size 15 on axis 1")
    assert post(json.dumps({"inputs": {"x": [1.0] * 16}}).encode())[1].startswith("input x has 1 dimensions")
    assert post(json.dumps({"inputs": {"x": [["a"] * 16]}}).encode())[1].startswith("input x is not a float32 array")
    assert post(json.dumps({"inputs": {"x": [[1.0] * 16], "y": 1}}).encode())[0] == 200  # extra inputs are ignored
    assert post(json.dumps({"inputs": {"a": 1, "b": 2}}).encode())[1].startswith("missing input(s) x")
    assert _raw(port, _request("POST", "/predict", [("Transfer-Encoding", "chunked")], b"0\r\n\r\n"))[0] == 411
    assert _raw(port, _request("POST", "/predict", [("Content-Length", str(10**12))], b""))[0] == 413


# ---- the artifact server over TLS: hostile handshakes -------------------------------------------

@pytest.fixture(scope="module")
def https(tmp_path_factory):
    root = tmp_path_factory.mktemp("https")
    tls = generate(root / "home", ["localhost", "127.0.0.1"])
    store = ArtifactStore(root / "store")
    sha, _ = store.put_bytes(b"artifact" * 1000)
    secret = b"s" * 32
    server = ArtifactServer(store, secret, lambda u, p: (u, p) == ("dev-a", "pw"), ssl_context=server_context(tls),
                            idle_timeout_s=2).start()
    yield server, tls, sha, secret
    server.stop()


def _https_get(server, tls, sha, secret) -> int:
    url = sign_artifact_url(server.base_url, sha, "dev-a", secret)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=client_context(tls.ca_cert))
    try:
        conn.request("GET", url[len(server.base_url):], headers={"Authorization": "Basic ZGV2LWE6cHc="})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


CLIENT_HELLO_START = bytes.fromhex("160301")  # a TLS record header: handshake, TLS 1.0 framing


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.one_of(st.binary(max_size=2000), st.binary(max_size=300).map(lambda b: CLIENT_HELLO_START + b),
                         st.just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), st.just(b"")))
def test_hostile_handshakes_never_stop_the_https_server(https, garbage):
    server, tls, sha, secret = https
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        try:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass  # the server hung up on the garbage (reset, not connected): as it should
    assert _https_get(server, tls, sha, secret) == 200


def test_plain_http_to_the_https_port_gets_nothing(https):
    server, tls, sha, secret = https
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, ssl.SSLError, OSError)):
        conn.request("GET", "/artifacts/" + sha)
        conn.getresponse()
    conn.close()
    assert _https_get(server, tls, sha, secret) == 200
