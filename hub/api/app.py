"""The FastAPI application: the API routers, the console, /metrics, and errors as one-line JSON.

    app = create_app(paths)          # what `hub serve` runs (hub/api/server.py)

Errors: every error body is {"error": "<one line>"}: 401 no valid token, 403 a role that may not,
404 no such thing, 409 a state that does not allow it, 413 too large, 422 a malformed request,
400 any other bad input (the message the local CLI prints for the same mistake).
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgehub.hub.access.tokens import Principal, TokenStore
from edgehub.hub.api import routes_fleet, routes_jobs
from edgehub.hub.api.auth import require
from edgehub.hub.api.metrics import HubMetrics
from edgehub.hub.client.local import LocalHub
from edgehub.hub.context import HubContext
from edgehub.hub.control.url_signing import load_or_create_secret
from edgehub.hub.home import HubPaths
from edgehub.hub.jobs.child import uploads_dir
from edgehub.hub.jobs.store import JobStore
from edgehub.hub.jobs.uploads import DEFAULT_MAX_BYTES, UploadError, UploadStore

log = logging.getLogger("edgehub.hub.api")
API_VERSION = "v1"


def console_secret(paths: HubPaths) -> bytes:
    """The per-hub secret of the console's CSRF tokens, in <home>/keys/ (mode 0600)."""
    return load_or_create_secret(paths.keys_dir / "console_secret")

def _status_of(exc: Exception) -> int:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    return 404 if str(exc).startswith("no ") else 400


def _one_line(message: object) -> str:
    text = str(message).strip()
    return text.splitlines()[0] if text else "error"


def create_app(paths: HubPaths, *, max_upload_bytes: int = DEFAULT_MAX_BYTES, secure_cookies: bool = False) -> FastAPI:
    from edgehub.hub.cli.common import known_errors
    from edgehub.hub.console.pages import router as console_router

    app = FastAPI(title="edgehub hub", version=API_VERSION, openapi_url=f"/api/{API_VERSION}/openapi.json",
                  docs_url=f"/api/{API_VERSION}/docs", redoc_url=None)
    hub = LocalHub(HubContext(paths))
    app.state.hub = hub
    app.state.paths = paths
    app.state.tokens = TokenStore(hub.context.engine)
    app.state.jobs = JobStore(hub.context.engine)
    app.state.uploads = UploadStore(hub.context.engine, uploads_dir(paths), max_upload_bytes)
    app.state.metrics = HubMetrics(hub, app.state.jobs)
    app.state.console_secret = console_secret(paths)
    app.state.secure_cookies = secure_cookies
    app.include_router(routes_fleet.router)
    app.include_router(routes_jobs.router)
    app.include_router(console_router)

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    def metrics_route(request: Request, who: Principal = Depends(require("viewer"))) -> Response:
        """Prometheus text format; scrape with a viewer token (`authorization: credentials` in Prometheus)."""
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/health", tags=["access"])
    def health() -> dict:
        return {"ok": True}

    known = known_errors()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/console") and exc.status_code == 401:
            return RedirectResponse("/console/login", status_code=303)
        return JSONResponse({"error": _one_line(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        headers = {"Upload-Offset": str(exc.offset)} if exc.offset is not None else None
        return JSONResponse({"error": _one_line(exc), "offset": exc.offset}, status_code=exc.status, headers=headers)

    for cls in known:
        @app.exception_handler(cls)
        async def known_error(request: Request, exc: Exception):
            return JSONResponse({"error": _one_line(exc)}, status_code=_status_of(exc))

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        request.app.state.metrics.requests.labels(status=str(response.status_code)).inc()
        return response

    return app

