"""The hub's HTTP API (JSON under /api/v1/, OpenAPI at /api/v1/openapi.json), the web console and
/metrics, served by uvicorn beside the artifact server (hub/api/server.py)."""
