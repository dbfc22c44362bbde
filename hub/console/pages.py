"""/console: the fleet overview, device, model, rollout, jobs and audit pages, and the login.

Pages read through the same LocalHub calls as the API (one source for what a page and `--json` say).
Jinja2 autoescapes every value, so a device id or an error text with HTML in it is shown as text.
Forms that change something carry the CSRF token (hub/api/auth.py) and answer with a redirect.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from edgehub.hub.access.roles import allows
from edgehub.hub.access.tokens import Principal
from edgehub.hub.api.auth import SESSION_COOKIE, check_csrf, csrf_token, require
from edgehub.hub.client.local import LocalHub
from edgehub.hub.client.models import StatusQuery
from edgehub.hub.fleet.records import FleetError

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(env=Environment(loader=PackageLoader("edgehub.hub.console", "templates"),
                                            autoescape=select_autoescape(default=True)))
PAGE = 50
ACTIONS = {"running": ("pause", "abort"), "paused": ("resume", "abort"), "waiting": ("approve", "pause", "abort")}


def _hub(request: Request, who: Principal) -> LocalHub:
    return request.app.state.hub.as_actor(who.actor)


def _page(request: Request, name: str, who: Principal | None, status_code: int = 200, **context) -> HTMLResponse:
    secret = request.app.state.console_secret
    return templates.TemplateResponse(request, name, {
        "who": who, "csrf": csrf_token(secret, who) if who else "", "can_operate": bool(who and allows(who.role, "operator")),
        "message": request.query_params.get("message"), **context}, status_code=status_code)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request):
    return _page(request, "login.html", None)


@router.post("/login")
def login(request: Request, token: str = Form("")):
    who = request.app.state.tokens.verify(token.strip())
    if who is None:
        return _page(request, "login.html", None, status_code=401, message="That token is not valid (wrong, expired "
                                                                          "or revoked).")
    request.app.state.hub.as_actor(who.actor).record("console.login", f"token:{who.token_id}")
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(SESSION_COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=request.app.state.secure_cookies, path="/")
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), who: Principal = Depends(require("viewer"))):
    check_csrf(request.app.state.console_secret, who, csrf)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("", response_class=HTMLResponse)
def fleet(request: Request, profile: str | None = None, group: str | None = None, online: str | None = None,
          page: int = Query(1, ge=1), who: Principal = Depends(require("viewer"))):
    online_flag = {"true": True, "false": False}.get(online or "")
    query = StatusQuery(profile=profile or None, group=group or None, online=online_flag)
    view = _hub(request, who).fleet_status(query, limit=PAGE, offset=(page - 1) * PAGE)
    total = view["summary"]["devices"]
    params = {k: v for k, v in (("profile", profile), ("group", group), ("online", online)) if v}
    link = lambda n: "/console?" + urlencode({**params, "page": n})  # noqa: E731
    first = (page - 1) * PAGE + 1 if view["devices"] else 0
    return _page(request, "fleet.html", who, summary=view["summary"], devices=view["devices"],
                 filters=query, total=total, first=first, last=first + len(view["devices"]) - 1 if first else 0,
                 prev_url=link(page - 1) if page > 1 else None,
                 next_url=link(page + 1) if page * PAGE < total else None)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device(request: Request, device_id: str, who: Principal = Depends(require("viewer"))):
    d = _hub(request, who).device(device_id)
    verdicts = {v["variant_id"]: v for v in (d["selection"] or {}).get("explanation", {}).get("verdicts", [])}
    return _page(request, "device.html", who, d=d, verdicts=verdicts)


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, who: Principal = Depends(require("viewer"))):
    return _page(request, "models.html", who, models=_hub(request, who).zoo_list()["models"])


def _tree(variants: list[dict]) -> list[dict]:
    nodes = {v["id"]: {**v, "children": []} for v in variants}
    roots = []
    for v in variants:
        parent = nodes.get(v["parent"]) if v["parent"] else None
        (parent["children"] if parent else roots).append(nodes[v["id"]])
    return roots


def _charts(report: dict) -> dict[str, str]:
    """The report's latency-accuracy chart per profile, as base64 SVG (shown in an <img>: nothing in it runs)."""
    from edgehub.hub.report.build import ProfileSection
    from edgehub.hub.report.charts import latency_accuracy_chart

    charts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, section in enumerate(report["profiles"]):
            path = latency_accuracy_chart(ProfileSection.model_validate(section), Path(tmp) / f"{n}.svg")
            charts[section["profile"]] = base64.b64encode(path.read_bytes()).decode()
    return charts


@router.get("/models/{name}", response_class=HTMLResponse)
def model(request: Request, name: str, version: int | None = Query(None, ge=1),
          who: Principal = Depends(require("viewer"))):
    hub = _hub(request, who)
    m = hub.zoo_show(name, version)
    report = hub.report(name, m["version"])
    latest = hub.context.registry.latest_version(name)
    roots = [v for v in m["variants"] if v["parent"] is None and v["precision"] == "fp32"]
    return _page(request, "model.html", who, m=m, report=report, charts=_charts(report), tree=_tree(m["variants"]),
                 versions=range(1, latest.version + 1), base_size=roots[0]["size_bytes"] if roots else None)


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts(request: Request, who: Principal = Depends(require("viewer"))):
    return _page(request, "rollouts.html", who, rollouts=list(reversed(_hub(request, who).rollout_list()["rollouts"])))


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout(request: Request, rollout_id: int, who: Principal = Depends(require("viewer"))):
    r = _hub(request, who).rollout_status(rollout_id)
    stages = []
    for stage in range(r["stages"]):
        c = r["counts"].get(str(stage), {"total": 0, "activated": 0, "failed": 0})
        stages.append({"n": stage + 1, "size": r["stage_sizes"][stage], "total": c["total"],
                       "activated": c["activated"], "failed": c["failed"],
                       "pending": c["total"] - c["activated"] - c["failed"], "current": stage == r["stage"],
                       "percent": round(100 * c["activated"] / c["total"]) if c["total"] else 0})
    return _page(request, "rollout.html", who, r=r, stages=stages, actions=ACTIONS.get(r["status"], ()))


@router.post("/rollouts/{rollout_id}/{action}")
def rollout_action(request: Request, rollout_id: int, action: str, csrf: str = Form(""),
                   who: Principal = Depends(require("operator"))):
    check_csrf(request.app.state.console_secret, who, csrf)
    if action not in ("pause", "resume", "approve", "abort"):
        raise HTTPException(404, f"no rollout action {action!r}")
    try:
        state = _hub(request, who).rollout_operate(action, rollout_id)
        message = f"{action}: rollout is {state['status']}"
    except FleetError as exc:
        message = str(exc)
    return RedirectResponse(f"/console/rollouts/{rollout_id}?" + urlencode({"message": message}), status_code=303)


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, who: Principal = Depends(require("viewer"))):
    _, found = request.app.state.jobs.list(limit=100)
    return _page(request, "jobs.html", who, jobs=[j.as_json(with_result=False) for j in found])


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, page: int = Query(1, ge=1), who: Principal = Depends(require("operator"))):
    data = _hub(request, who).audit(limit=PAGE, offset=(page - 1) * PAGE)
    more = page * PAGE < data["total"]
    return _page(request, "audit.html", who, entries=data["entries"], total=data["total"],
                 next_url=f"/console/audit?page={page + 1}" if more else None)
