"""HTTP server for the artifact store: authorized, resumable downloads for agents.

Plain HTTP or HTTPS (`ssl_context`, from `edgehub.hub.serve.certs`; the handshake happens in each
connection's own thread). `GET|HEAD /artifacts/<sha256>?device=<id>&exp=<unix>&sig=<hex>` needs, in this order:
HTTP Basic credentials accepted by `authenticate` (401), a username equal to `device` (403:
an authenticated device using another device's URL), a valid unexpired signature from
`url_signing` (403), and the object in the store (404). Single byte ranges are honoured (206 /
416); multi-range requests get the whole object (200). Nothing that could be a secret (the
Authorization header, the sig) is logged or echoed back.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO
from urllib.parse import parse_qs

from edgehub.hub.control.url_signing import check_signature
from edgehub.zoo.store import ArtifactStore

log = logging.getLogger(__name__)

MAX_QUERY_BYTES = 2048
CHUNK_BYTES = 256 * 1024
_PATH_RE = re.compile(r"^/artifacts/([0-9a-f]{64})$")
_RANGE_RE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$", re.ASCII | re.IGNORECASE)
_REDACT_RE = re.compile(r"(sig=)[^&\s'\"]*", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) inclusive for a satisfiable single range; None to serve the whole object
    (no header, multi-range, other units, or syntax RFC 9110 says to ignore); "416" when the
    range is well-formed but unsatisfiable."""
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if not match:
        return None  # includes "bytes=0-1,5-9": multi-range is served as a plain 200
    first_s, last_s = match.groups()
    if not first_s:
        if not last_s:
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return "416"
        return max(0, size - suffix), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid range-spec: ignore the header
    if first >= size:
        return "416"
    return first, min(last, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and ranges; every response has a length
    server_version = "edgehub-artifacts"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.app.idle_timeout_s  # drops idle or stalled clients
        context = self.server.app.ssl_context
        if context is not None:
            # The handshake runs here, in this connection's thread: a slow or hostile client
            # cannot stall the accept loop.
            self.request.settimeout(self.timeout)
            self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.server.app.ssl_context is not None:
                self.request.close()  # the TLS socket; the server only closes the plain one

    def handle_one_request(self) -> None:
        self._in_serve = self._responded = False  # per request on a keep-alive connection
        super().handle_one_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    # --- logging: one line per request, never the query string or headers -----------------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: `_serve` writes the request's line once the body is out."""

    def log_message(self, format: str, *args: object) -> None:
        text = _REDACT_RE.sub(r"\1<redacted>", format % args)
        log.debug("%s %s", self.client_address[0], text)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stock message can quote the raw request line (with its sig); send only the code.
        super().send_error(code)
        if not self._in_serve:  # parse errors never reach `_serve`: log them here
            log.info("%s - %d (unparsable request)", self.client_address[0], code)

    # --- routing: every known method lands in `_serve` (GET/HEAD served, the rest 405) --------
    def _serve(self) -> None:
        self._in_serve = True
        started = time.monotonic()
        self._status, self._sent = 500, 0
        try:
            self._route(body=self.command == "GET")
        except Exception:  # a bug (or a failing `authenticate`) costs one request, not the server
            log.exception("artifact request failed")
            self.close_connection = True
            if not self._responded:
                self._reply(500, "internal error")
        finally:
            path = self.path.split("?", 1)[0][:100]  # never the query: it holds the sig
            log.info("%s %s %r %d %dB %.1fms", self.client_address[0], self.command, path,
                     self._status, self._sent, (time.monotonic() - started) * 1000)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve
    do_TRACE = do_CONNECT = _serve

    def _reply(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        """A short plain-text response; errors close the connection (the request may have
        carried an unread body, and a failing client should reconnect anyway)."""
        self._status = status
        data = (text + "\n").encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self, body: bool) -> None:
        app = self.server.app
        if self.command not in ("GET", "HEAD"):
            return self._reply(405, "method not allowed", {"Allow": "GET, HEAD"})
        path, _, query = self.path.partition("?")
        if len(query) > MAX_QUERY_BYTES:
            return self._reply(414, "query string too long")
        match = _PATH_RE.match(path)
        if not match:
            return self._reply(404, "not found")
        sha = match.group(1)
        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=8)
        except ValueError:
            return self._reply(400, "malformed query string")
        if any(len(params.get(k, ())) > 1 for k in ("device", "exp", "sig")):
            return self._reply(400, "repeated query parameter")
        device, exp, sig = (params.get(k, [""])[0] for k in ("device", "exp", "sig"))

        user = self._basic_user(app.authenticate)
        if user is None:
            return self._reply(401, "authentication required",
                               {"WWW-Authenticate": 'Basic realm="edgehub", charset="UTF-8"'})
        if user != device:
            return self._reply(403, "forbidden: url issued to another device")
        reason = check_signature(sha, device, exp, sig, app.secret)
        if reason is not None:
            return self._reply(403, f"forbidden: {reason}")
        try:
            fh = open(app.store.path_for(sha), "rb")
        except FileNotFoundError:
            return self._reply(404, "not found")
        with fh:
            self._send_object(fh, sha, body)

    def _basic_user(self, authenticate: Callable[[str, str], bool]) -> str | None:
        """The authenticated username, or None. Never logs the header."""
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            return None
        return user if authenticate(user, password) else None

    def _send_object(self, fh: BinaryIO, sha: str, body: bool) -> None:
        app = self.server.app
        size = os.fstat(fh.fileno()).st_size
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "416":
            return self._reply(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        length = last - first + 1
        self._status = 206 if isinstance(wanted, tuple) else 200
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                   "ETag": f'"{sha}"', "Accept-Ranges": "bytes", "Cache-Control": "private"}
        if self._status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self.send_response(self._status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        cut_after = app.fault(sha) if app.fault is not None else None
        fh.seek(first)
        remaining = length
        pace = _Pace(app.max_bytes_per_s)
        try:
            while remaining > 0:
                step = min(app.chunk_bytes, remaining)
                if cut_after is not None:
                    step = min(step, cut_after - self._sent)
                    if step <= 0:
                        return self._cut()
                data = fh.read(step)
                if not data:
                    raise OSError(f"object {sha[:12]} shrank while being served")
                self.wfile.write(data)
                self._sent += len(data)
                app._count(len(data))
                remaining -= len(data)
                pace.wait(self._sent)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away; it will resume with a Range

    def _cut(self) -> None:
        """Fault hook: end the connection mid-body (FIN after the bytes already sent)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # already gone: the cut has happened either way
            log.debug("fault cut on a closed socket: %s", exc)


class _Pace:
    """Keeps one response at or under `rate` bytes per second (None: no limit), so a hub on a
    thin uplink can cap what each device download takes."""

    def __init__(self, rate: float | None):
        self.rate, self.started = rate, time.monotonic()

    def wait(self, sent: int) -> None:
        if self.rate:
            ahead = sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: ArtifactServer

    def handle_error(self, request: object, client_address: tuple) -> None:
        # A client hanging up mid-request is routine on edge networks: no traceback on stderr.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError):
            log.info("%s - TLS handshake failed: %s", client_address[0], getattr(error, "reason", None) or error)
        elif isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended abruptly", client_address[0])
        else:
            log.exception("error on connection from %s", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


class ArtifactServer:
    """Serves `store` over HTTP in a daemon thread; see the module docstring for the rules.

    `fault`, a test hook (tests and the fault-injection suite): called with the sha of each GET
    that sends a body; if it returns n, the server sends n body bytes and then closes the
    connection mid-response, as a flaky network would. Leave it None in production.
    """

    def __init__(self, store: ArtifactStore, secret: bytes,
                 authenticate: Callable[[str, str], bool], host: str = "127.0.0.1",
                 port: int = 0, *, fault: Callable[[str], int | None] | None = None,
                 chunk_bytes: int = CHUNK_BYTES, idle_timeout_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None,
                 max_bytes_per_s: float | None = None) -> None:
        self.store, self.secret, self.authenticate = store, secret, authenticate
        self.host, self._port, self.fault = host, port, fault
        self.chunk_bytes, self.idle_timeout_s = chunk_bytes, idle_timeout_s
        self.ssl_context = ssl_context  # HTTPS (see edgehub.hub.serve.certs.server_context)
        self.max_bytes_per_s = max_bytes_per_s  # per connection; None: as fast as the link goes
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.bytes_sent = 0  # body bytes written, all requests together (tests, metrics)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> ArtifactServer:
        if self._httpd is not None:
            raise RuntimeError("artifact server already started")
        server_cls = _Server6 if ":" in self.host else _Server
        httpd = server_cls((self.host, self._port), _Handler)
        httpd.app = self
        self._httpd = httpd
        # A short poll interval only makes stop() prompt; select() still sleeps between polls.
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,),
                                        name="artifact-server", daemon=True)
        self._thread.start()
        log.info("artifact server listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._port = self._httpd.server_address[1]
        self._httpd = self._thread = None

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ArtifactServer", "MAX_QUERY_BYTES", "parse_range"]
