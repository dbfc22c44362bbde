"""/api/v1: resumable uploads and build jobs (a remote `edgehub publish`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from edgehub.hub.access.roles import allows
from edgehub.hub.access.tokens import Principal
from edgehub.hub.api.auth import require
from edgehub.hub.client.models import PublishRequest
from edgehub.hub.jobs.store import JobError
from edgehub.hub.jobs.uploads import UploadError

router = APIRouter(prefix="/api/v1")
MAX_CHUNK_BYTES = 64 * 1024 * 1024


class NewUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0)
    sha256: str


@router.post("/uploads", tags=["jobs"], status_code=201)
def upload_create(request: Request, body: NewUpload, who: Principal = Depends(require("publisher"))) -> dict:
    """Declare an upload; if the same bytes were uploaded before by this token, that one is returned
    complete (nothing to send)."""
    uploads = request.app.state.uploads
    found = uploads.find(who.actor, body.sha256, body.size)
    if found is not None:
        return found.as_json()
    return uploads.create(who.actor, body.filename, body.size, body.sha256).as_json()


@router.get("/uploads/{upload_id}", tags=["jobs"])
def upload_status(request: Request, upload_id: str, who: Principal = Depends(require("publisher"))) -> dict:
    """Where an upload stands (`offset`): a client resumes from there."""
    return request.app.state.uploads.get(upload_id, who.actor).as_json()


@router.patch("/uploads/{upload_id}", tags=["jobs"])
async def upload_chunk(request: Request, upload_id: str, upload_offset: int = Header(..., ge=0),
                       content_length: int = Header(..., ge=0, le=MAX_CHUNK_BYTES),
                       who: Principal = Depends(require("publisher"))) -> dict:
    """Append the body at `Upload-Offset` (which must be the upload's offset; 409 tells the real one)."""
    chunk = bytearray()
    async for part in request.stream():
        chunk += part
        if len(chunk) > MAX_CHUNK_BYTES:
            raise HTTPException(413, f"a chunk is at most {MAX_CHUNK_BYTES} bytes")
    return (await run_in_threadpool(request.app.state.uploads.append, upload_id, who.actor, upload_offset,
                                    bytes(chunk))).as_json()


@router.post("/jobs/publish", tags=["jobs"], status_code=202)
def publish(request: Request, body: PublishRequest, who: Principal = Depends(require("publisher"))) -> dict:
    """Queue a publish of uploaded files; follow it with GET /jobs/{id}/events."""
    if (body.deploy or body.rollout) and not allows(who.role, "operator"):
        raise HTTPException(403, f"the token {who.name!r} has the role {who.role}: publishing registers a version; "
                                 "deploying it or starting a rollout needs operator or above")
    uploads = request.app.state.uploads
    for upload_id in (*body.files.values(), *body.modules.values()):
        uploads.complete_path(upload_id, who.actor)  # 404 / 409 now, not in the job
    if "source" not in body.files and not body.source:
        raise UploadError("give the model: an uploaded .onnx (files.source) or a factory 'package.module:function'")
    if "eval" not in body.files:
        raise UploadError("give the eval set (files.eval)")
    job = request.app.state.jobs.enqueue("publish", who.actor, body.model_dump(mode="json"))
    request.app.state.hub.as_actor(who.actor).record("job.publish", f"job:{job.id}", detail={"name": body.name})
    return job.as_json()


@router.get("/jobs", tags=["jobs"])
def jobs(request: Request, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
         state: str | None = None, who: Principal = Depends(require("viewer"))) -> dict:
    total, found = request.app.state.jobs.list(limit=limit, offset=offset, state=state)
    return {"total": total, "jobs": [j.as_json(with_result=False) for j in found]}


@router.get("/jobs/{job_id}", tags=["jobs"])
def job(request: Request, job_id: int, who: Principal = Depends(require("viewer"))) -> dict:
    return request.app.state.jobs.get(job_id).as_json()


@router.get("/jobs/{job_id}/events", tags=["jobs"])
def job_events(request: Request, job_id: int, after: int = Query(0, ge=0),
               who: Principal = Depends(require("viewer"))) -> dict:
    store = request.app.state.jobs
    job = store.get(job_id)
    return {"state": job.state, "events": store.events(job_id, after)}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def job_cancel(request: Request, job_id: int, who: Principal = Depends(require("publisher"))) -> dict:
    store = request.app.state.jobs
    if store.get(job_id).owner != who.actor and not allows(who.role, "operator"):
        raise HTTPException(403, f"job #{job_id} is not yours: cancelling another's job needs operator or above")
    hub = request.app.state.hub.as_actor(who.actor)
    try:
        job = store.cancel(job_id)
    except JobError as exc:
        hub.record("job.cancel", f"job:{job_id}", ok=False, detail={"error": str(exc)})
        raise
    hub.record("job.cancel", f"job:{job_id}")
    return job.as_json(with_result=False)
