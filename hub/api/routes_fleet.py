"""/api/v1: the fleet, devices, models, rollouts, aliases and the audit log. Each route is a thin
call of LocalHub acting as the caller, so the JSON is what the local CLI's `--json` prints."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from edgehub.hub.access.tokens import Principal
from edgehub.hub.api.auth import principal, require
from edgehub.hub.client.local import LocalHub
from edgehub.hub.client.models import AliasRequest, RolloutRequest, StatusQuery, TagRequest

router = APIRouter(prefix="/api/v1")
MAX_PAGE = 1000


def hub_of(request: Request, who: Principal) -> LocalHub:
    return request.app.state.hub.as_actor(who.actor)


@router.get("/whoami", tags=["access"])
def whoami(who: Principal = Depends(principal)) -> dict:
    return {"name": who.name, "role": who.role, "token_id": who.token_id}


@router.get("/fleet/status", tags=["fleet"])
def fleet_status(request: Request, profile: str | None = None, group: str | None = None, online: bool | None = None,
                 rollout: int | None = None, simulated: bool | None = None,
                 limit: int | None = Query(None, ge=0, le=MAX_PAGE * 100), offset: int = Query(0, ge=0),
                 who: Principal = Depends(require("viewer"))) -> dict:
    """Summary counts over every matching device and a page of their rows (`--json` of `fleet status`)."""
    query = StatusQuery(profile=profile, group=group, online=online, rollout=rollout, simulated=simulated)
    return hub_of(request, who).fleet_status(query, limit=limit, offset=offset)


@router.get("/fleet/telemetry", tags=["fleet"])
def telemetry(request: Request, device: str | None = None, model: str | None = None, since: str = "1h",
              limit: int = Query(500, ge=1, le=10_000), who: Principal = Depends(require("viewer"))) -> dict:
    """Field telemetry of a device or a model's variants (`fleet telemetry --json`)."""
    return hub_of(request, who).telemetry(device, model, since, limit)


@router.get("/devices/{device_id}", tags=["fleet"])
def device(request: Request, device_id: str, who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).device(device_id)


@router.get("/devices/{device_id}/explain", tags=["fleet"])
def explain(request: Request, device_id: str, model: str | None = None,
            who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).explain(device_id, model)


@router.post("/fleet/tags", tags=["fleet"])
def tag(request: Request, body: TagRequest, who: Principal = Depends(require("operator"))) -> dict:
    return hub_of(request, who).tag(body)


@router.get("/models", tags=["zoo"])
def models(request: Request, who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).zoo_list()


@router.get("/models/{name}", tags=["zoo"])
def model(request: Request, name: str, version: int | None = Query(None, ge=1),
          who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).zoo_show(name, version)


@router.get("/models/{name}/report", tags=["zoo"])
def model_report(request: Request, name: str, version: int | None = Query(None, ge=1),
                 who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).report(name, version)


@router.get("/rollouts", tags=["rollouts"])
def rollouts(request: Request, who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).rollout_list()


@router.get("/rollouts/latest", tags=["rollouts"])
def rollout_latest(request: Request, who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).rollout_status(None)


@router.get("/rollouts/{rollout_id}", tags=["rollouts"])
def rollout(request: Request, rollout_id: int, who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).rollout_status(rollout_id)


@router.post("/rollouts", tags=["rollouts"], status_code=201)
def rollout_start(request: Request, body: RolloutRequest, who: Principal = Depends(require("operator"))) -> dict:
    return hub_of(request, who).rollout_start(body)


@router.post("/rollouts/{rollout_id}/{action}", tags=["rollouts"])
def rollout_action(request: Request, rollout_id: int, action: Literal["pause", "resume", "approve", "abort"],
                   who: Principal = Depends(require("operator"))) -> dict:
    return hub_of(request, who).rollout_operate(action, rollout_id)


@router.get("/aliases", tags=["rollouts"])
def aliases(request: Request, who: Principal = Depends(require("viewer"))) -> dict:
    return hub_of(request, who).alias_list()


@router.put("/aliases/{name}", tags=["rollouts"])
def alias_set(request: Request, name: str, body: AliasRequest, who: Principal = Depends(require("operator"))) -> dict:
    return hub_of(request, who).alias_set(name, body)


@router.delete("/aliases/{name}", tags=["rollouts"])
def alias_delete(request: Request, name: str, group: str | None = None, profile: str | None = None,
                 model: str | None = None, who: Principal = Depends(require("operator"))) -> dict:
    return hub_of(request, who).alias_delete(name, group, profile, model)


@router.get("/audit", tags=["access"])
def audit(request: Request, limit: int = Query(100, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
          actor: str | None = None, who: Principal = Depends(require("operator"))) -> dict:
    return hub_of(request, who).audit(limit=limit, offset=offset, actor=actor)
