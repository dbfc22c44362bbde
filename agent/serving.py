"""Local inference for applications on the device: `POST /predict` on the active variant.

    curl -s localhost:8765/predict -d '{"inputs": {"x": [[...]]}}'

The standard library's threading HTTP server is enough for a local endpoint and adds no
dependency to the device install.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from edgehub.agent.local_state import InstalledVariant
from edgehub.agent.runtimes import runtime_for

log = logging.getLogger("edgehub.agent.serving")
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ModelHolder:
    """The loaded session of the active variant, reloaded when the active variant changes."""

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
                self._loaded = (variant.sha256, runtime_for(variant.format).load(variant.path))
            return variant, self._loaded[1]


def _feed(body: dict, session) -> dict[str, np.ndarray]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, dict):
        raise ValueError('body must be {"inputs": {"<input name>": [...]}}')
    names = [spec.name for spec in session.inputs]
    if len(names) == 1 and names[0] not in inputs and len(inputs) == 1:
        inputs = {names[0]: next(iter(inputs.values()))}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(names)}")
    return {spec.name: np.asarray(inputs[spec.name], dtype=spec.dtype) for spec in session.inputs}


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgehub-agent"
    holder: ModelHolder

    def log_message(self, format: str, *args) -> None:  # route through logging, not stderr
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_REQUEST_BYTES:
            self._reply(413 if length > MAX_REQUEST_BYTES else 400, {"error": f"body must be 1..{MAX_REQUEST_BYTES} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            variant, session = self.holder.session()
            feed = _feed(body, session)
            started = time.perf_counter()
            outputs = session.run(feed)
            elapsed = (time.perf_counter() - started) * 1000
        except LookupError as exc:
            self._reply(503, {"error": str(exc)})
            return
        except (ValueError, TypeError) as exc:
            self._reply(400, {"error": str(exc).splitlines()[0][:500]})
            return
        except Exception as exc:  # the runtime rejects inputs with its own exception types
            self._reply(400, {"error": f"inference failed: {str(exc).splitlines()[0][:500]}"})
            return
        names = [spec.name for spec in session.outputs]
        self._reply(200, {"variant": variant.variant_id, "ms": round(elapsed, 3),
                          "outputs": {n: o.tolist() for n, o in zip(names, outputs)}})


class LocalServer:
    def __init__(self, holder: ModelHolder, host: str = "127.0.0.1", port: int = 8765):
        handler = type("Handler", (_Handler,), {"holder": holder})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgehub-serve", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
