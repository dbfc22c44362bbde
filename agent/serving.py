"""Local inference for applications on the device: `POST /predict/<model>` on that model slot's
active variant, `POST /predict` when the device serves one model, `GET /models` for what is active.

    curl -s localhost:8765/predict/fashion-mnist -d '{"inputs": {"x": [[...]]}}'

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
from urllib.parse import unquote

import numpy as np

from edgehub.agent.load import RequestRates
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

    def __init__(self, active: Callable[[], InstalledVariant | None], settings: Callable[[], object] = lambda: None):
        self._active = active
        self._settings = settings  # the slot's RuntimeSettings (None: the runtime's defaults)
        self._lock = threading.Lock()
        self._loaded: tuple[str, object, object] | None = None  # (sha256, settings, session)

    def session(self) -> tuple[InstalledVariant, object]:
        variant = self._active()
        if variant is None:
            raise LookupError("no active model on this device yet")
        settings = self._settings()
        with self._lock:
            if self._loaded is None or self._loaded[:2] != (variant.sha256, settings):
                self._loaded = None
                if sha256_file(variant.path) != variant.sha256:
                    raise ModelUnavailable(f"the active model file of {variant.variant_id} does not match its "
                                           "sha256; it is not loaded")
                try:
                    session = runtime_for(variant.format).load(variant.path, settings=settings)
                except Exception as exc:  # the runtime's own exception types
                    raise ModelUnavailable(f"cannot load {variant.variant_id}: {_first_line(exc)}") from None
                self._loaded = (variant.sha256, settings, session)
            return variant, self._loaded[2]


class ModelShelf:
    """A ModelHolder per model slot, made on the first request to the slot.

    `active` gives slot -> active variant; a slot the agent dropped is dropped here too."""

    def __init__(self, active: Callable[[], dict[str, InstalledVariant]],
                 settings: Callable[[str], object] = lambda slot: None):
        self.active = active
        self.settings = settings  # slot -> its RuntimeSettings
        self._lock = threading.Lock()
        self._holders: dict[str, ModelHolder] = {}

    @classmethod
    def of(cls, holder: ModelHolder) -> ModelShelf:
        """One holder as a shelf (a one-model device, tests): its slot is named by the variant's model."""
        def one() -> dict[str, InstalledVariant]:
            variant = holder._active()
            return {variant.manifest.manifest.model: variant} if variant is not None else {}
        shelf = cls(one)
        shelf._single = holder
        return shelf

    _single: ModelHolder | None = None

    def holder(self, slot: str | None) -> tuple[str, ModelHolder]:
        """The slot to serve (None: the only one) and its holder; LookupError / BadRequest if none."""
        active = self.active()
        if slot is None:
            if not active:
                raise LookupError("no active model on this device yet")
            if len(active) > 1:
                raise BadRequest(f"this device serves {len(active)} models; use POST /predict/<model> "
                                 f"with one of: {', '.join(sorted(active))}")
            slot = next(iter(active))
        elif slot not in active:
            raise NoSuchModel(f"no active model {slot!r} on this device"
                              + (f"; it serves {', '.join(sorted(active))}" if active else ""))
        if self._single is not None:
            return slot, self._single
        with self._lock:
            for gone in set(self._holders) - set(active):
                del self._holders[gone]  # its session is freed with it
            holder = self._holders.get(slot)
            if holder is None:
                holder = self._holders[slot] = ModelHolder(lambda: self.active().get(slot),
                                                           lambda: self.settings(slot))
            return slot, holder


class NoSuchModel(LookupError):
    """A request for a model slot the device does not serve (404)."""


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
    shelf: ModelShelf
    recorder: FieldRecorder | None = None  # field telemetry (agent/telemetry.py)
    rates: RequestRates | None = None

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

    def _failed(self, slot: str | None, kind: str) -> None:
        if self.recorder is not None:
            active = self.shelf.active()
            if slot is None and len(active) == 1:
                slot = next(iter(active))
            variant = active.get(slot) if slot else None
            self.recorder.error(variant.variant_id if variant else None, kind, slot=slot)

    def do_GET(self) -> None:
        if self.path == "/health":
            active = self.shelf.active()
            first = next(iter(active.values()), None)
            self._reply(200, {"active_variant": first.variant_id if first else None,
                              "models": {m: v.variant_id for m, v in active.items()}})
        elif self.path == "/models":
            self._reply(200, {"models": [_model_entry(m, v) for m, v in self.shelf.active().items()]})
        else:
            self._reply(404, {"error": "not found; use POST /predict/<model>, GET /models or GET /health"})

    def _slot_of_path(self) -> str | None:
        if self.path == "/predict":
            return None
        if self.path.startswith("/predict/") and len(self.path) > len("/predict/"):
            return unquote(self.path[len("/predict/"):])
        raise NoSuchModel("not found; use POST /predict/<model> (or POST /predict on a one-model device)")

    def do_POST(self) -> None:
        slot = None
        try:
            slot = self._slot_of_path()
            body = parse_request(self.rfile.read(content_length(self.headers)))
            slot, holder = self.shelf.holder(slot)
            variant, session = holder.session()
            feed = _feed(body, session)
            started = time.perf_counter()
            outputs = session.run(feed)
            elapsed = (time.perf_counter() - started) * 1000
        except NoSuchModel as exc:
            self._reply(404, {"error": str(exc)})
            return
        except BadRequest as exc:
            self._failed(slot, "bad_request")
            self._reply(exc.status, {"error": str(exc)})
            return
        except (LookupError, ModelUnavailable) as exc:
            self._failed(slot, "unavailable")
            self._reply(503, {"error": str(exc)})
            return
        except Exception as exc:  # the runtime rejects inputs with its own exception types
            self._failed(slot, "inference")
            self._reply(400, {"error": f"inference failed: {_first_line(exc)}"})
            return
        names = [spec.name for spec in session.outputs]
        self._reply(200, {"model": slot, "variant": variant.variant_id, "ms": round(elapsed, 3),
                          "outputs": {n: _jsonable(np.asarray(o)) for n, o in zip(names, outputs)}})
        if self.rates is not None:
            self.rates.count(slot)
        if self.recorder is not None:  # after the answer: the client does not wait for it
            self.recorder.record(variant.variant_id, feed, dict(zip(names, outputs)), elapsed, slot=slot)


def _model_entry(slot: str, variant: InstalledVariant) -> dict:
    m = variant.manifest.manifest
    return {"model": slot, "version": m.version, "variant": variant.variant_id, "format": m.format,
            "precision": m.precision, "inputs": [t.model_dump() for t in m.inputs],
            "outputs": [t.model_dump() for t in m.outputs], "predict": f"/predict/{slot}"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up or stalls costs its own connection only; no traceback on stderr.
        log.debug("connection from %s ended: %s", client_address[0], sys.exc_info()[1])


class LocalServer:
    def __init__(self, models: ModelShelf | ModelHolder, host: str = "127.0.0.1", port: int = 8765,
                 recorder: FieldRecorder | None = None, rates: RequestRates | None = None):
        shelf = ModelShelf.of(models) if isinstance(models, ModelHolder) else models
        handler = type("Handler", (_Handler,), {"shelf": shelf, "recorder": recorder, "rates": rates})
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
