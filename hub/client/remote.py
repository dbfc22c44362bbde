"""The hub over its HTTP API (httpx): the same methods and the same JSON as LocalHub, so the CLI
does not care where the hub is. Nothing is written to the local hub home.

A remote publish uploads its files (resumable, sha256-checked, skipped when the hub has the same
bytes from this token already), queues a job and follows its progress events into the same sink
the local build feeds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from edgehub.hub.client.models import AliasRequest, PublishRequest, RolloutRequest, StatusQuery, TagRequest

CHUNK_BYTES = 8 * 1024 * 1024
RETRIES = 5
FOLLOW_EVERY_S = 0.5
FINISHED = ("succeeded", "failed", "cancelled")


class RemoteError(Exception):
    """What the hub answered (or why it could not be reached), as one line."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def module_file(dotted: str) -> Path | None:
    """The .py file of a plain (non-package) module importable here, to send along; None when it
    is not importable here or not a plain file (the hub must then have it installed)."""
    try:
        spec = importlib.util.find_spec(dotted)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.submodule_search_locations is not None:
        return None
    origin = Path(spec.origin)
    return origin if origin.suffix == ".py" and origin.is_file() else None


class RemoteHub:
    def __init__(self, url: str, token: str | None, ca: str | None = None, timeout_s: float = 60.0):
        if not token:
            raise RemoteError("a remote hub needs a token: set EDGEHUB_TOKEN (or --token); make one on the hub with "
                              "`edgehub hub token create NAME --role ROLE`")
        self.url = url.rstrip("/")
        if self.url.endswith("/api/v1"):
            self.url = self.url[: -len("/api/v1")]
        verify: Any = ca if ca else True
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 verify=verify, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RemoteHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the hub at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text[:200] or response.reason_phrase
            raise RemoteError(f"{message} (hub answered {response.status_code})")
        return response.json()

    # -- fleet, zoo, rollouts, aliases, audit: one request each -----------------------------------

    def fleet_status(self, query: StatusQuery | None = None, *, limit: int | None = None, offset: int = 0) -> dict:
        params = {k: v for k, v in (query or StatusQuery()).model_dump().items() if v is not None}
        if limit is not None:
            params["limit"] = limit
        return self._call("GET", "/fleet/status", params={**params, "offset": offset})

    def explain(self, device_id: str, model: str | None = None) -> dict:
        return self._call("GET", f"/devices/{device_id}/explain", params={"model": model} if model else None)

    def device(self, device_id: str) -> dict:
        return self._call("GET", f"/devices/{device_id}")

    def telemetry(self, device_id: str | None = None, model: str | None = None, since: str = "1h",
                  limit: int = 500) -> dict:
        params = {"since": since, "limit": limit, **({"device": device_id} if device_id else {}),
                  **({"model": model} if model else {})}
        return self._call("GET", "/fleet/telemetry", params=params)

    def tag(self, request: TagRequest) -> dict:
        return self._call("POST", "/fleet/tags", json=request.model_dump())

    def zoo_list(self) -> dict:
        return self._call("GET", "/models")

    def zoo_show(self, name: str, version: int | None = None) -> dict:
        return self._call("GET", f"/models/{name}", params={"version": version} if version else None)

    def report(self, name: str, version: int | None = None) -> dict:
        return self._call("GET", f"/models/{name}/report", params={"version": version} if version else None)

    def rollout_start(self, request: RolloutRequest) -> dict:
        return self._call("POST", "/rollouts", json=request.model_dump())

    def rollout_status(self, rollout_id: int | None = None) -> dict:
        return self._call("GET", f"/rollouts/{'latest' if rollout_id is None else rollout_id}")

    def rollout_list(self) -> dict:
        return self._call("GET", "/rollouts")

    def rollout_operate(self, action: str, rollout_id: int | None = None) -> dict:
        if rollout_id is None:
            rollout_id = self.rollout_status(None)["id"]
        return self._call("POST", f"/rollouts/{rollout_id}/{action}")

    def alias_list(self) -> dict:
        return self._call("GET", "/aliases")

    def alias_set(self, name: str, request: AliasRequest) -> dict:
        return self._call("PUT", f"/aliases/{name}", json=request.model_dump())

    def alias_delete(self, name: str, group: str | None = None, profile: str | None = None,
                     model: str | None = None) -> dict:
        params = {k: v for k, v in (("group", group), ("profile", profile), ("model", model)) if v}
        return self._call("DELETE", f"/aliases/{name}", params=params)

    def audit(self, *, limit: int = 100, offset: int = 0, actor: str | None = None) -> dict:
        params = {"limit": limit, "offset": offset, **({"actor": actor} if actor else {})}
        return self._call("GET", "/audit", params=params)

    def job_list(self, *, limit: int = 50, offset: int = 0, state: str | None = None) -> dict:
        return self._call("GET", "/jobs", params={"limit": limit, "offset": offset, **({"state": state} if state else {})})

    def job_show(self, job_id: int) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def job_cancel(self, job_id: int) -> dict:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    # -- publish ----------------------------------------------------------------------------------

    def upload(self, path: Path, on_progress: Callable[[str, int, int], None] | None = None) -> str:
        """Send a file (resuming where the hub stands after a cut); returns its upload id."""
        path = Path(path)
        if not path.is_file():
            raise RemoteError(f"{path}: no such file")
        size = path.stat().st_size
        upload = self._call("POST", "/uploads", json={"filename": path.name, "size": size, "sha256": _sha256(path)})
        failures = 0
        with open(path, "rb") as handle:
            while not upload["complete"]:
                offset = upload["offset"]
                if on_progress:
                    on_progress(path.name, offset, size)
                handle.seek(offset)
                chunk = handle.read(CHUNK_BYTES)
                try:
                    response = self.http.patch(f"/uploads/{upload['id']}", content=chunk,
                                               headers={"Upload-Offset": str(offset),
                                                        "Content-Type": "application/offset+octet-stream"})
                except httpx.HTTPError as exc:
                    failures += 1
                    if failures > RETRIES:
                        raise RemoteError(f"uploading {path.name} failed {failures} times: {exc}") from None
                    time.sleep(min(2.0 ** failures * 0.1, 5.0))
                    upload = self._call("GET", f"/uploads/{upload['id']}")  # where the hub stands
                    continue
                if response.status_code == 409:  # the hub has another offset: go on from there
                    upload = self._call("GET", f"/uploads/{upload['id']}")
                    continue
                if response.status_code >= 400:
                    raise RemoteError(f"{response.json().get('error', response.text)} (hub answered "
                                      f"{response.status_code})")
                upload = response.json()
        if on_progress:
            on_progress(path.name, size, size)
        return upload["id"]

    def publish(self, options, sink=None, *, deploy: bool = False, rollout=None,
                on_upload: Callable[[str, int, int], None] | None = None) -> dict:
        """Upload what `options` (a PublishOptions) names, queue the build, follow it; the result is
        what a local publish returns (raises RemoteError with the job's one-line error)."""
        files: dict[str, str] = {}
        source = None
        named = {"eval": options.eval_path, "weights": options.weights, "calib": options.calib_path,
                 "train": options.train_path, "unlabeled": options.unlabeled_path, "recipe": options.recipe_path,
                 "profiles_file": options.profiles_file}
        if Path(options.source).suffix == ".onnx" or Path(options.source).is_file():
            named["source"] = Path(options.source)
        else:
            source = options.source
        for role, path in named.items():
            if path is not None:
                files[role] = self.upload(Path(path), on_upload)
        modules = {}
        for ref in filter(None, (source, options.metric)):
            dotted = ref.partition(":")[0]
            found = module_file(dotted)
            if found is not None:
                modules[dotted] = self.upload(found, on_upload)
        request = PublishRequest(name=options.name, source=source, files=files, modules=modules,
                                 profiles=list(options.profiles), metric=options.metric, new_version=options.new_version,
                                 eval_timeout_s=options.eval_timeout_s, eval_memory_mb=options.eval_memory_mb,
                                 deploy=deploy, rollout=rollout)
        job = self._call("POST", "/jobs/publish", json=request.model_dump(mode="json"))
        return self.follow(job["id"], sink)

    def follow(self, job_id: int, sink=None) -> dict:
        """Replay the job's progress into `sink` until it ends; its result, or RemoteError."""
        seen = 0
        while True:
            batch = self._call("GET", f"/jobs/{job_id}/events", params={"after": seen})
            for event in batch["events"]:
                seen = event["seq"]
                if sink is not None:
                    _replay(sink, event)
            if batch["state"] in FINISHED and not batch["events"]:
                break
            if batch["state"] not in FINISHED:
                time.sleep(FOLLOW_EVERY_S)
        job = self.job_show(job_id)
        if job["state"] != "succeeded":
            raise RemoteError(f"job #{job_id} {job['state']}: {job['error']}")
        return job["result"]


def _replay(sink, event: dict) -> None:
    data, kind = event["data"], event["kind"]
    if kind == "start":
        sink.start(data["label"], data["steps"])
    elif kind == "update":
        sink.update(data["label"], data["message"])
    elif kind == "advance":
        sink.advance(data["label"])
    elif kind == "train":
        label = data.pop("label")
        sink.train(label, SimpleNamespace(**data))
