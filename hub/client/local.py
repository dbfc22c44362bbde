"""The hub called in-process: what every CLI command does on the hub machine, and what the HTTP API
runs for a remote one. Each method returns plain JSON data (the `--json` shape); each change to
the fleet is written to the audit log under `actor`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edgehub.hub.access.audit import AuditLog, local_actor
from edgehub.hub.client.models import AliasRequest, RolloutRequest, StatusQuery, TagRequest
from edgehub.hub.context import HubContext
from edgehub.hub.fleet.records import FleetError
from edgehub.hub.home import HubPaths
from edgehub.hub.rollout.machine import RolloutError
from edgehub.zoo.registry import RegistryError

T = TypeVar("T")


class LocalHub:
    def __init__(self, context: HubContext, actor: str | None = None):
        self.context = context
        self.actor = actor or local_actor()
        self.audit_log = AuditLog(context.engine)

    @classmethod
    def open(cls, home: str | Path | None = None, actor: str | None = None) -> LocalHub:
        return cls(HubContext(HubPaths.from_home(home)), actor)

    def as_actor(self, actor: str) -> LocalHub:
        """The same hub (and database engine), acting for someone else (one per API request)."""
        other = copy.copy(self)
        other.actor = actor
        return other

    @property
    def paths(self) -> HubPaths:
        return self.context.paths

    def close(self) -> None:
        self.context.close()

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _audited(self, action: str, target: str, do: Callable[[], T], detail: dict | None = None) -> T:
        """Run `do` and log it, whether it worked or not (a refused action is worth knowing too)."""
        try:
            result = do()
        except Exception as exc:
            self.audit_log.record(self.actor, action, target, ok=False,
                                  detail={**(detail or {}), "error": str(exc).splitlines()[0] if str(exc) else repr(exc)})
            raise
        self.audit_log.record(self.actor, action, target, ok=True, detail=detail)
        return result

    # -- fleet ------------------------------------------------------------------------------------

    def fleet_status(self, query: StatusQuery | None = None, *, limit: int | None = None, offset: int = 0) -> dict:
        """Summary counts over every matching device, and up to `limit` of their rows from `offset`."""
        from edgehub.hub.fleet.views import StatusFilter

        where = StatusFilter(**(query or StatusQuery()).model_dump())
        fleet = self.context.fleet
        return {"summary": fleet.status_summary(where), "devices": fleet.status_rows(where, limit=limit, offset=offset)}

    def _device_or_fail(self, device_id: str):
        record = self.context.fleet.get_device(device_id)
        if record is None:
            raise FleetError(f"no device {device_id!r}; see `edgehub fleet status`")
        return record

    def explain(self, device_id: str, model: str | None = None) -> dict:
        """Why the device runs its variant (of `model`; default: its first model slot's): the
        verdict on every candidate, and the device's other models."""
        record = self._device_or_fail(device_id)
        found = self.context.fleet.selections_many([device_id]).get(device_id, [])
        selection = self.context.fleet.selection(device_id, model)
        if selection is None or (model is not None and selection.model != model):
            raise FleetError(f"no selection for {device_id}{f' and model {model}' if model else ''} yet: it has "
                             "not reported every candidate" + (f"; it has selections for "
                                                               f"{', '.join(s.model for s in found)}" if found else ""))
        hardware = record.state.hardware if record.state else None
        # An emulated CPU (qemu-user): the verdicts on correctness stand, the timings mean nothing.
        return {**selection.model_dump(mode="json"), "models": [s.model for s in found],
                "emulated": hardware.emulated if hardware else None}

    def device(self, device_id: str) -> dict:
        """One device: its record and reported state (hardware, runtimes), every benchmark it ran,
        the selection with its verdicts, and its newest activation results."""
        fleet = self.context.fleet
        record = self._device_or_fail(device_id)
        selection = fleet.selection(device_id)
        from edgehub.hub.fleet.views import StatusFilter

        [row] = fleet.status_rows(StatusFilter(device=device_id)) or [{}]
        return {"device": record.model_dump(mode="json", exclude={"state"}),
                "state": record.state.model_dump(mode="json") if record.state else None,
                "benchmarks": fleet.device_benchmarks(device_id),
                "selection": selection.model_dump(mode="json") if selection else None,
                "selections": [s.model_dump(mode="json") for s in fleet.selections_many([device_id]).get(device_id, [])],
                # One entry per model slot: variant, selection, benchmark p50, settings, newest field interval.
                "models": row.get("models", []),
                "activations": fleet.device_activations(device_id)}

    def tag(self, request: TagRequest) -> dict:
        from edgehub.hub.fleet.groups import validate_tag

        if not request.add and not request.remove:
            raise FleetError("nothing to do: give --add TAG and/or --remove TAG")
        for t in (*request.add, *request.remove):
            validate_tag(t)
        ids = list(dict.fromkeys(request.devices))
        records = self._audited("fleet.tag", f"devices:{len(ids)}", lambda: self.context.fleet.set_tags(
            ids, add=request.add, remove=request.remove), {"add": request.add, "remove": request.remove})
        return {"devices": [{"device": r.id, "tags": r.tags} for r in records]}

    def telemetry(self, device_id: str | None = None, model: str | None = None, since: str = "1h",
                  limit: int = 500) -> dict:
        """Field telemetry of a device or of every device running a model's variants, since `since`
        (30m, 12h, 7d): totals, per variant, and the newest intervals."""
        from datetime import timedelta

        from edgehub.hub.access.tokens import parse_duration
        from edgehub.hub.fleet.field import merge_rows
        from edgehub.zoo.records import utcnow

        if bool(device_id) == bool(model):
            raise FleetError("give a DEVICE or --model MODEL")
        window: timedelta = parse_duration(since)
        fleet, variant_ids = self.context.fleet, None
        if device_id:
            self._device_or_fail(device_id)
        else:
            variant_ids = [v.id for v in self.context.registry.variants(model)]
            if not variant_ids:
                raise RegistryError(f"no model {model!r} in the zoo; see `edgehub zoo list`")
        rows = fleet.telemetry(device_id=device_id, variant_ids=variant_ids, since=utcnow() - window, limit=100_000)
        by_variant: dict[str | None, list] = {}
        for r in rows:
            by_variant.setdefault(r.variant_id, []).append(r)
        # Drift over the whole window, per variant (its version's bins): enough values to mean something.
        per_variant = {str(v): _field_figures(merge_rows(rs), rs, self._reference(v)) for v, rs in by_variant.items()}
        summary = _field_figures(merge_rows(rows), rows, None)
        drifts = [f["drift"] for f in per_variant.values() if f["drift"] is not None]
        summary["drift"] = max(drifts) if drifts else None
        return {"device": device_id, "model": model, "since": since, "intervals_total": len(rows),
                "summary": summary, "by_variant": per_variant,
                "intervals": [{"device": r.device_id, "variant_id": r.variant_id, "resolution": r.resolution,
                               "start": r.start.isoformat(), "end": r.end.isoformat(), "intervals": r.intervals,
                               "requests": r.requests, "errors": r.errors, "p99_ms": r.p99_ms, "drift": r.drift}
                              for r in rows[-limit:]]}

    def _reference(self, variant_id: str | None):
        from edgehub.protocol.telemetry import FieldReference

        v = self.context.registry.get_variant(variant_id) if variant_id else None
        data = v.notes.get("field_reference") if v else None
        return FieldReference.model_validate(data) if data else None

    # -- zoo --------------------------------------------------------------------------------------

    def zoo_list(self) -> dict:
        return {"models": [m.model_dump(mode="json") for m in self.context.registry.list_models()]}

    def zoo_show(self, name: str, version: int | None = None) -> dict:
        registry = self.context.registry
        record = registry.get_version(name, version) if version else registry.latest_version(name)
        if record is None:
            what = f"{name} v{version}" if version else name
            raise RegistryError(f"no model {what} in the zoo; see `edgehub zoo list`")
        variants = registry.variants(name, record.version)
        return {"model": name, "version": record.version, "source": record.model_dump(mode="json"),
                "variants": [v.public_json() for v in variants]}

    def report(self, name: str, version: int | None = None) -> dict:
        """What `edgehub report` charts: per profile, latency vs accuracy with the Pareto front."""
        from edgehub.hub.report.build import gather

        return gather(self.context.fleet, self.context.registry, name, version).model_dump(mode="json")

    # -- rollouts and aliases ---------------------------------------------------------------------

    def model_version(self, text: str) -> tuple[str, int]:
        """`MODEL` (its latest version) or `MODEL:VERSION`."""
        name, _, version = text.partition(":")
        if version:
            if not version.lstrip("v").isdigit():
                raise RolloutError(f"bad version in {text!r}: use MODEL or MODEL:VERSION (e.g. fmnist:2)")
            if self.context.registry.get_version(name, int(version.lstrip("v"))) is None:
                raise RolloutError(f"no model {name} v{int(version.lstrip('v'))} in the registry; see `edgehub zoo list`")
            return name, int(version.lstrip("v"))
        latest = self.context.registry.latest_version(name)
        if latest is None:
            raise RolloutError(f"no model {name!r} in the registry; see `edgehub zoo list`")
        return name, latest.version

    def rollout_start(self, request: RolloutRequest) -> dict:
        from edgehub.hub.rollout.machine import (
            FieldGate,
            RolloutSpec,
            parse_error_threshold,
            parse_fraction,
            parse_stage_size,
        )
        from edgehub.hub.rollout.ops import start_rollout

        def start() -> dict:
            sizes = [parse_stage_size(request.canary), *(parse_stage_size(s) for s in request.stages if s.strip())]
            share, count = parse_error_threshold(request.error_threshold)
            gated = any(v is not None for v in (request.max_error_rate, request.max_p99_ratio, request.max_output_shift))
            field = FieldGate(max_error_rate=parse_fraction(request.max_error_rate, "field error rate")
                              if request.max_error_rate is not None else None,
                              max_p99_ratio=request.max_p99_ratio, max_output_shift=request.max_output_shift,
                              min_requests=request.min_requests) if gated else None
            name, version = self.model_version(request.model)
            spec = RolloutSpec(model=name, version=version, selector=request.group, stages=sizes,
                               success_threshold=parse_fraction(request.success_threshold, "success threshold"),
                               error_threshold=share, error_count=count, min_soak_s=request.soak_s,
                               on_success=request.on_success, on_error=request.on_error, field=field)
            return start_rollout(self.context.fleet, self.context.registry, spec).model_dump()

        return self._audited("rollout.start", f"group:{request.group}", start, request.model_dump())

    def rollout_status(self, rollout_id: int | None = None) -> dict:
        from edgehub.hub.rollout.machine import RolloutState, targeted
        from edgehub.hub.rollout.ops import counts_of, find

        fleet = self.context.fleet
        record = find(fleet, rollout_id)
        state = RolloutState.model_validate(record.state)
        counts = counts_of(fleet, record.id)
        spec = state.spec
        return {"id": record.id, "model": record.model, "version": record.version, "group": record.selector,
                "status": state.status, "stage": state.stage, "stages": spec.stage_count,
                "stage_sizes": [str(x) for x in spec.stages] + ["100%"], "reason": state.reason,
                "success_threshold": spec.success_threshold, "error_threshold": spec.error_threshold,
                "error_count": spec.error_count, "on_success": spec.on_success, "on_error": spec.on_error,
                "field": spec.field.model_dump() if spec.field else None,
                "counts": {str(k): v.model_dump() for k, v in sorted(counts.items())},
                "targeted": targeted(state, counts).model_dump(),
                "history": [t.model_dump(mode="json") for t in state.history]}

    def rollout_list(self) -> dict:
        return {"rollouts": [{"id": r.id, "model": r.model, "version": r.version, "group": r.selector,
                              "status": r.status, "stage": r.stage, "created_at": r.created_at.isoformat()}
                             for r in self.context.fleet.rollouts()]}

    def rollout_operate(self, action: str, rollout_id: int | None = None) -> dict:
        from edgehub.hub.rollout.ops import find, operate

        record = find(self.context.fleet, rollout_id)
        state = self._audited(f"rollout.{action}", f"rollout:{record.id}",
                              lambda: operate(self.context.fleet, record.id, action))
        return {"id": record.id, "status": state.status, "stage": state.stage, "reason": state.reason}

    def alias_list(self) -> dict:
        return {"aliases": [a.model_dump(mode="json") for a in self.context.fleet.aliases()]}

    @staticmethod
    def _scope(group: str | None, profile: str | None) -> str:
        from edgehub.hub.fleet.groups import parse_selector

        if bool(group) == bool(profile):
            raise RolloutError("give exactly one of --group TAG or --profile NAME")
        return parse_selector(f"profile:{profile}" if profile else group).scope

    def alias_set(self, name: str, request: AliasRequest) -> dict:
        from edgehub.hub.fleet.groups import validate_tag

        validate_tag(name)
        scope = self._scope(request.group, request.profile)

        def set_alias() -> dict:
            model, version = self.model_version(request.model)
            return self.context.fleet.set_alias(scope, name, model, version).model_dump(mode="json")

        return self._audited("alias.set", f"{scope}:{name}", set_alias, {"model": request.model})

    def alias_delete(self, name: str, group: str | None = None, profile: str | None = None,
                     model: str | None = None) -> dict:
        scope = self._scope(group, profile)

        def delete() -> dict:
            if not self.context.fleet.delete_alias(scope, name, model):
                raise RolloutError(f"no alias {name!r}{f' of {model}' if model else ''} on {scope}")
            return {"scope": scope, "name": name, "model": model, "deleted": True}

        return self._audited("alias.delete", f"{scope}:{name}", delete)

    # -- publish ----------------------------------------------------------------------------------

    def publish(self, options, sink=None, *, deploy: bool = False, rollout=None, on_upload=None) -> dict:
        """Build and register `options` (a PublishOptions); with `deploy`, make it the profiles'
        production at once; with `rollout` (a PublishRollout), start a rollout of it on its group or
        on each profile. Returns the `publish --json` data, with the rollouts started. (`on_upload`
        is RemoteHub's; nothing is uploaded here.)"""
        from edgehub.hub.publish.release import publish_and_deploy

        ctx = self.context
        release = self._audited("model.publish", f"model:{options.name}", lambda: publish_and_deploy(
            options, ctx.paths, ctx.registry, ctx.fleet, sink, deploy_to_fleet=deploy),
            {"profiles": list(options.profiles), "deploy": deploy})
        data = release.as_json()
        data["rollouts"] = []
        if rollout is not None:
            model = f"{data['model']}:{data['version']}"
            groups = [rollout.group] if rollout.group else [f"profile:{p}" for p in dict.fromkeys(options.profiles)]
            for group in groups:
                started = self.rollout_start(rollout.for_group(model, group))
                data["rollouts"].append({"group": group, **started})
        return data

    # -- jobs -------------------------------------------------------------------------------------

    @property
    def jobs(self):
        from edgehub.hub.jobs.store import JobStore

        return JobStore(self.context.engine)

    def job_list(self, *, limit: int = 50, offset: int = 0, state: str | None = None) -> dict:
        total, found = self.jobs.list(limit=limit, offset=offset, state=state)
        return {"total": total, "jobs": [j.as_json(with_result=False) for j in found]}

    def job_show(self, job_id: int) -> dict:
        return self.jobs.get(job_id).as_json()

    def job_cancel(self, job_id: int) -> dict:
        return self._audited("job.cancel", f"job:{job_id}", lambda: self.jobs.cancel(job_id).as_json(with_result=False))

    # -- audit ------------------------------------------------------------------------------------

    def audit(self, *, limit: int = 100, offset: int = 0, actor: str | None = None) -> dict:
        total, entries = self.audit_log.entries(limit=limit, offset=offset, actor=actor)
        return {"total": total, "entries": [e.as_json() for e in entries]}

    def record(self, action: str, target: str, ok: bool = True, detail: dict[str, Any] | None = None) -> None:
        """An audit entry for an action done elsewhere (a publish, a token change)."""
        self.audit_log.record(self.actor, action, target, ok=ok, detail=detail)


def _field_figures(stats, rows, reference) -> dict:
    """Totals of merged telemetry: request rate, error rate by kind, latency percentiles, input drift
    over the merged window (PSI against the eval set's bins; None without enough values)."""
    from edgehub.protocol.telemetry import input_drift

    seconds = sum((r.end - r.start).total_seconds() for r in rows)
    devices = len({r.device_id for r in rows})
    return {"devices": devices, "requests": stats.requests, "errors": dict(stats.errors),
            "error_rate": stats.error_count / max(1, stats.requests + stats.error_count),
            "requests_per_min": stats.requests / (seconds / 60) * devices if seconds else 0.0,
            "p50_ms": stats.latency_ms(0.5), "p90_ms": stats.latency_ms(0.9), "p99_ms": stats.latency_ms(0.99),
            "drift": input_drift(stats, reference),
            "inputs": [{"name": i.name, "count": i.count, "mean": i.mean, "std": i.std, "min": i.min, "max": i.max}
                       for i in stats.inputs]}
