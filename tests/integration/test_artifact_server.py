"""The hub's artifact server: auth, signed URLs, ranges, hostile input, logging, the fault hook."""

from __future__ import annotations

import base64
import http.client
import logging
import random
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgehub.hub.control.url_signing import check_signature, load_or_create_secret, sign_artifact_url
from edgehub.hub.serve.artifact_server import ArtifactServer, parse_range
from edgehub.zoo.store import ArtifactStore

SECRET = b"s" * 32
DEVICES = {"dev-a": "pw-a", "dev-b": "pw-b"}
DATA = random.Random(7).randbytes(300_000)


def _auth(user: str, password: str) -> bool:
    return DEVICES.get(user) == password


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Served:
    def __init__(self, root: Path) -> None:
        self.store = ArtifactStore(root)
        self.sha, _ = self.store.put_bytes(DATA)
        self.cuts: list[int] = []  # byte counts the fault hook hands out, one per GET
        self.server = ArtifactServer(self.store, SECRET, _auth,
                                     fault=lambda sha: self.cuts.pop(0) if self.cuts else None)

    def target(self, device: str = "dev-a", sha: str | None = None, **kw: float) -> str:
        url = sign_artifact_url(self.server.base_url, sha or self.sha, device, SECRET, **kw)
        return url[len(self.server.base_url):]

    def get(self, target: str, headers: dict[str, str] | None = None, method: str = "GET",
            user: str | None = "dev-a") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        hdrs = dict(headers or {})
        if user is not None:
            hdrs.setdefault("Authorization", basic(user, DEVICES.get(user, "x")))
        try:
            conn.request(method, target, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path / "store")
    with served.server:
        yield served


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("shared-store"))
    with served.server:
        yield served


def test_full_get_and_head(srv: Served) -> None:
    status, headers, body = srv.get(srv.target())
    assert status == 200 and body == DATA
    assert headers["Content-Length"] == str(len(DATA))
    assert headers["ETag"] == f'"{srv.sha}"' and headers["Accept-Ranges"] == "bytes"
    status, headers, body = srv.get(srv.target(), method="HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(DATA))
    assert srv.server.bytes_sent == len(DATA)


def test_auth_required(srv: Served) -> None:
    status, headers, _ = srv.get(srv.target(), user=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    status, _, _ = srv.get(srv.target(), headers={"Authorization": basic("dev-a", "wrong")})
    assert status == 401
    status, _, _ = srv.get(srv.target(), headers={"Authorization": "Basic !!notbase64"})
    assert status == 401


def test_url_of_device_a_used_by_device_b_is_forbidden(srv: Served) -> None:
    status, _, body = srv.get(srv.target("dev-a"), user="dev-b")
    assert status == 403 and b"another device" in body


def test_expired_and_tampered_urls_are_forbidden(srv: Served) -> None:
    status, _, body = srv.get(srv.target(now=time.time() - 7200, ttl_s=3600))
    assert (status, body.strip()) == (403, b"forbidden: expired")
    other = "0" * 64
    tampered = srv.target().replace(srv.sha, other)  # the path sha no longer matches the sig
    status, _, body = srv.get(tampered)
    assert (status, body.strip()) == (403, b"forbidden: bad signature")
    target = srv.target()
    status, _, _ = srv.get(target[:-1] + ("1" if target.endswith("0") else "0"))  # a different last digit
    assert status == 403
    status, _, _ = srv.get(srv.target().split("&sig=")[0])
    assert status == 403


def test_missing_object_is_404(srv: Served) -> None:
    assert srv.get(srv.target(sha="ab" * 32))[0] == 404


@pytest.mark.parametrize("target", [
    "/", "/artifacts/", "/artifacts/../../etc/passwd", "/artifacts/%2e%2e%2fx",
    "/artifacts//{sha}", "/artifacts/{sha}/", "/artifacts/{SHA}", "/artifacts/{sha}x",
])
def test_path_tricks_are_404(srv: Served, target: str) -> None:
    path = target.format(sha=srv.sha, SHA=srv.sha.upper())
    query = srv.target().partition("?")[2]
    assert srv.get(f"{path}?{query}")[0] == 404


def test_methods_long_queries_and_repeated_params(srv: Served) -> None:
    status, headers, _ = srv.get(srv.target(), method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert srv.get(srv.target(), method="DELETE")[0] == 405
    assert srv.get(srv.target() + "&pad=" + "x" * 2100)[0] == 414
    assert srv.get(srv.target() + "&device=dev-a")[0] == 400


@pytest.mark.parametrize("header,status,first,last", [
    ("bytes=10-19", 206, 10, 19),
    ("bytes=-100", 206, len(DATA) - 100, len(DATA) - 1),
    ("bytes=299990-", 206, 299990, len(DATA) - 1),
    ("bytes=0-999999999", 206, 0, len(DATA) - 1),
    ("bytes=-999999999", 206, 0, len(DATA) - 1),
    (f"bytes={len(DATA)}-", 416, None, None),
    ("bytes=-0", 416, None, None),
    ("bytes=5-1", 200, 0, len(DATA) - 1),  # invalid spec: ignored
    ("bytes=0-1,5-9", 200, 0, len(DATA) - 1),  # multi-range: whole object
    ("items=0-1", 200, 0, len(DATA) - 1),
])
def test_ranges(srv: Served, header: str, status: int, first: int | None, last: int | None) -> None:
    got, headers, body = srv.get(srv.target(), headers={"Range": header})
    assert got == status
    if status == 416:
        assert headers["Content-Range"] == f"bytes */{len(DATA)}"
        return
    assert body == DATA[first : last + 1]
    if status == 206:
        assert headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"


def test_parse_range_empty_object() -> None:
    assert parse_range("bytes=0-", 0) == "416"
    assert parse_range("bytes=-5", 0) == "416"
    assert parse_range(None, 0) is None


def test_fault_hook_cuts_the_body(srv: Served) -> None:
    srv.cuts = [1000]
    with pytest.raises(http.client.IncompleteRead) as cut:
        srv.get(srv.target())
    assert cut.value.partial == DATA[:1000]  # exactly n bytes, then the connection ends
    assert srv.get(srv.target())[2] == DATA  # the hook only cut the first GET


def test_logs_one_line_per_request_without_secrets(
    srv: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgehub.hub.serve.artifact_server")
    target = srv.target()
    sig = target.rpartition("sig=")[2]
    srv.get(target)
    srv.get(target, headers={"Authorization": basic("dev-a", "wrong")})
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=5) as sock:
        sock.sendall(f"GET {target} EXTRA JUNK\r\n\r\n".encode())  # unparsable request line
        sock.recv(4096)
    # The server thread logs after it has answered: give the last line a moment to land.
    deadline = time.monotonic() + 5
    while len([r for r in caplog.records if r.levelno == logging.INFO]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 3
    for text in [r.getMessage() for r in caplog.records]:
        assert sig not in text and "pw-a" not in text and "Authorization" not in text


def test_failing_authenticate_costs_one_request(tmp_path: Path) -> None:
    calls = []

    def flaky(user: str, password: str) -> bool:
        calls.append(user)
        if len(calls) == 1:
            raise RuntimeError("credential database unavailable")
        return _auth(user, password)

    served = Served(tmp_path / "store")
    served.server.authenticate = flaky
    with served.server:
        assert served.get(served.target())[0] == 500
        assert served.get(served.target())[2] == DATA


def test_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "url_secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32 and load_or_create_secret(path) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="expected 32"):
        load_or_create_secret(path)


def test_check_signature_reasons() -> None:
    sha = "ab" * 32
    url = sign_artifact_url("http://h", sha, "dev-a", SECRET, ttl_s=60, now=1000)
    q = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert url.startswith(f"http://h/artifacts/{sha}?device=dev-a&exp=1060&sig=")
    assert check_signature(sha, "dev-a", q["exp"], q["sig"], SECRET, now=1000) is None
    assert check_signature(sha, "dev-a", q["exp"], q["sig"], SECRET, now=1060) == "expired"
    assert check_signature(sha, "dev-b", q["exp"], q["sig"], SECRET, now=1000) == "bad signature"
    assert check_signature(sha, "dev-a", q["exp"], q["sig"], b"t" * 32, now=1) == "bad signature"
    # A forged sig on an expired URL learns "bad signature", not whether it expired.
    assert check_signature(sha, "dev-a", q["exp"], "0" * 64, SECRET, now=9999) == "bad signature"
    assert check_signature(sha, "dev-a", "-1", q["sig"], SECRET) == "malformed"
    assert check_signature(sha, "dev-a", q["exp"], "zz", SECRET) == "malformed"
    assert check_signature(sha.upper(), "dev-a", q["exp"], q["sig"], SECRET) == "malformed"
    with pytest.raises(ValueError):
        sign_artifact_url("http://h", "ab" * 32, "Dev|A", SECRET)


ALLOWED = {200, 206, 400, 401, 403, 404, 405, 414, 416}
_chars = st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))
_text = st.text(_chars, max_size=80)
_num = st.one_of(st.none(), st.integers(-5, 400_000), st.integers(0, 10**30))


@st.composite
def _range_header(draw: st.DrawFn) -> str | None:
    kind = draw(st.sampled_from(["none", "text", "spec", "multi"]))
    if kind == "none":
        return None
    if kind == "text":
        return draw(_text)
    spec = "{}-{}".format(*("" if n is None else n for n in (draw(_num), draw(_num))))
    return "bytes=" + (spec + ",0-1" if kind == "multi" else spec)


@st.composite
def _target(draw: st.DrawFn, valid: str) -> str:
    kind = draw(st.sampled_from(["valid"] * 4 + ["mutated", "random", "artifacts", "long-query"]))
    if kind == "valid":
        return valid
    if kind == "mutated":
        i = draw(st.integers(0, len(valid) - 1))
        return valid[:i] + draw(_text) + valid[i + 1 :]
    if kind == "random":
        return "/" + draw(_text)
    if kind == "artifacts":
        return "/artifacts/" + draw(_text) + "?" + draw(_text)
    return valid + "&x=" + "y" * draw(st.integers(1900, 2600))


def _raw(port: int, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """A request sent byte for byte (http.client would refuse most hostile targets)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_requests_never_crash_the_server(shared: Served, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"]))
    target = data.draw(_target(shared.target()))
    headers = {}
    auth = data.draw(st.sampled_from(["good"] * 4 + ["other-device", "junk", "none"]))
    if auth in ("good", "other-device"):
        headers["Authorization"] = basic(*{"good": ("dev-a", "pw-a"),
                                           "other-device": ("dev-b", "pw-b")}[auth])
    elif auth == "junk":
        headers["Authorization"] = data.draw(_text)
    rng = data.draw(_range_header())
    if rng is not None:
        headers["Range"] = rng
    status, got_headers, body = _raw(shared.server.port, method, target, headers)
    assert status in ALLOWED
    if status == 206 and method == "GET":
        first, last = map(int, got_headers["Content-Range"].split()[1].split("/")[0].split("-"))
        assert body == DATA[first : last + 1]
    if status == 200 and method == "GET":
        assert body == DATA
    # ...and the server still serves a well-formed request afterwards.
    assert shared.get(shared.target(), headers={"Range": "bytes=0-9"})[2] == DATA[:10]
