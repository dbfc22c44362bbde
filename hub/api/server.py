"""The API and console server: uvicorn in a thread of `hub serve`, HTTPS with the hub's certificate
when `hub certs` enabled TLS.

It listens on its own port (`api_port`), apart from the artifact server that devices download
from: a device network can be given the artifact port only, and the people-facing API, with its
heavier framework, cannot slow or stall downloads (README: Architecture).
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

from edgehub.hub.serve.certs import TlsPaths

log = logging.getLogger("edgehub.hub.api")


class ApiServer:
    def __init__(self, app: FastAPI, host: str, port: int, tls: TlsPaths | None = None):
        self.app, self.host, self.port, self.tls = app, host, port, tls
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                ssl_certfile=str(tls.server_cert) if tls else None,
                                ssl_keyfile=str(tls.server_key) if tls else None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="edgehub-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
