"""Local inference for applications on the device: `POST /predict` on the active variant.

    curl -s localhost:8765/predict -d '{"inputs": {"x": [[...]]}}'

The standard library's threading HTTP server is enough for a local endpoint and adds no
dependency to the device install.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from edgehub.agent.local_state import InstalledVariant
from edgehub.agent.runtimes import runtime_for
from edgehub.agent.telemetry import FieldRecorder
from edgehub.protocol.files import sha256_file

log = logging.getLogger("edgehub.agent.serving")
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_ERROR_CHARS = 500


class ModelHolder:
    """The loaded session of the active variant, reloaded when the active variant changes.

    The file is checked against its sha256 before a session is made from it: a model changed
    on disk since it was verified is refused, not loaded."""

    def __init__(self, active: Callable[[], InstalledVariant | None]):
        self._active = active
        self._lock = threading.Lock()
        self._loaded: tuple[str, object] | None = None  # (sha256, session)

    def session(self) -> tuple[InstalledVariant, object]:
        variant = self._active()
        if variant is None:
            raise LookupError("no active model on this device yet")
        with self._lock:
            if self._loaded is None or self._loaded[0] != variant.sha256:
                self._loaded = None
                if sha256_file(variant.path) != variant.sha256:
                    raise ModelUnavailable(f"the active model file of {variant.variant_id} does not match its "
                                           "sha256; it is not loaded")
                try:
                    session = runtime_for(variant.format).load(variant.path)
                except Exception as exc:  # the runtime's own exception types
                    raise ModelUnavailable(f"cannot load {variant.variant_id}: {_first_line(exc)}") from None
                self._loaded = (variant.sha256, session)
            return variant, self._loaded[1]


class ModelUnavailable(Exception):
    """The active model cannot be served right now (503)."""


class BadRequest(ValueError):
    """The request is malformed (400) or too large (413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:MAX_ERROR_CHARS]


def content_length(headers) -> int:
    """The request's body length, or BadRequest: a body is required, chunked bodies are not
    accepted, and the length must be 1..MAX_REQUEST_BYTES."""
    if headers.get("Transfer-Encoding"):
        raise BadRequest("send the body with a Content-Length (no Transfer-Encoding)", 411)
    values = headers.get_all("Content-Length") or []
    if len(values) != 1 or not values[0].strip().isdigit():
        raise BadRequest("one numeric Content-Length is required")
    length = int(values[0].strip())
    if length > MAX_REQUEST_BYTES:
        raise BadRequest(f"body of {length} bytes is over the {MAX_REQUEST_BYTES}-byte limit", 413)
    if length == 0:
        raise BadRequest('empty body; send {"inputs": {"<input name>": [...]}}')
    return length


def parse_request(raw: bytes) -> dict:
    """The JSON body as a dict with an "inputs" object, or BadRequest."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
        raise BadRequest(f"body is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise BadRequest('body must be {"inputs": {"<input name>": [...]}}')
    return body


def _feed(body: dict, session) -> dict[str, np.ndarray]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, dict):
        raise BadRequest('body must be {"inputs": {"<input name>": [...]}}')
    names = [spec.name for spec in session.inputs]
    if len(names) == 1 and names[0] not in inputs and len(inputs) == 1:
        inputs = {names[0]: next(iter(inputs.values()))}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise BadRequest(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(names)}")
    feed = {}
    for spec in session.inputs:
        value = inputs[spec.name]
        if not isinstance(value, (list, int, float)) or (isinstance(value, bool) and spec.dtype != "bool"):
            raise BadRequest(f"input {spec.name} must be a (nested) list of numbers")
        try:
            array = np.asarray(value, dtype=spec.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(f"input {spec.name} is not a {spec.dtype} array: {_first_line(exc)}") from None
        rank = len(spec.shape)
        if rank and array.ndim != rank:
            raise BadRequest(f"input {spec.name} has {array.ndim} dimensions; the model takes "
                             f"{rank} {list(spec.shape)}")
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(want, int) and want > 0 and got != want:
                raise BadRequest(f"input {spec.name} has size {got} on axis {axis}; the model takes {want}")
        feed[spec.name] = array
    return feed


def _jsonable(array: np.ndarray) -> list | float | int | None:
    """Strict JSON has no NaN or infinity: non-finite outputs become null."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return np.where(np.isfinite(array), array, None).tolist()
    return array.tolist()


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgehub-agent"
    timeout = 30  # a client that stops sending mid-request is dropped, not waited on forever
    holder: ModelHolder
    recorder: FieldRecorder | None = None  # field telemetry (agent/telemetry.py)

    def log_message(self, format: str, *args) -> None:  # route through logging, not stderr
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, an unknown method) in
        the same JSON shape as ours."""
        self.close_connection = True
        text = " ".join((message or self.responses.get(code, ("error",))[0]).split())
        self._reply(code, {"error": text.encode("unicode_escape").decode("ascii")[:MAX_ERROR_CHARS]})

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(data)

    def _failed(self, kind: str) -> None:
        if self.recorder is not None:
            variant = self.holder._active()
            self.recorder.error(variant.variant_id if variant else None, kind)

    def do_GET(self) -> None:
        if self.path != "/health":
            self._reply(404, {"error": "not found; use POST /predict or GET /health"})
            return
        variant = self.holder._active()
        self._reply(200, {"active_variant": variant.variant_id if variant else None})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._reply(404, {"error": "not found; use POST /predict"})
            return
        try:
            body = parse_request(self.rfile.read(content_length(self.headers)))
            variant, session = self.holder.session()
            feed = _feed(body, session)
            started = time.perf_counter()
            outputs = session.run(feed)
            elapsed = (time.perf_counter() - started) * 1000
        except BadRequest as exc:
            self._failed("bad_request")
            self._reply(exc.status, {"error": str(exc)})
            return
        except (LookupError, ModelUnavailable) as exc:
            self._failed("unavailable")
            self._reply(503, {"error": str(exc)})
            return
        except Exception as exc:  # the runtime rejects inputs with its own exception types
            self._failed("inference")
            self._reply(400, {"error": f"inference failed: {_first_line(exc)}"})
            return
        names = [spec.name for spec in session.outputs]
        self._reply(200, {"variant": variant.variant_id, "ms": round(elapsed, 3),
                          "outputs": {n: _jsonable(np.asarray(o)) for n, o in zip(names, outputs)}})
        if self.recorder is not None:  # after the answer: the client does not wait for it
            self.recorder.record(variant.variant_id, feed, dict(zip(names, outputs)), elapsed)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up or stalls costs its own connection only; no traceback on stderr.
        log.debug("connection from %s ended: %s", client_address[0], sys.exc_info()[1])


class LocalServer:
    def __init__(self, holder: ModelHolder, host: str = "127.0.0.1", port: int = 8765,
                 recorder: FieldRecorder | None = None):
        handler = type("Handler", (_Handler,), {"holder": holder, "recorder": recorder})
        self._server = _Server((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgehub-serve", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
