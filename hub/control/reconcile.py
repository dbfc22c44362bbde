"""Reconciling a batch of devices: target, candidates, selection (per device or per cohort),
rollout membership and outcome, the next desired state. A fixed number of queries per chunk of
devices, one transaction for everything decided; the pure parts live in control.targets,
control.selection, control.cohorts, rollout.machine and control.planner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from edgehub.hub.control import cohorts
from edgehub.hub.control.candidates import facts_of, loadable, reference_accuracy
from edgehub.hub.control.cohort_plan import CohortPlanner, DevicePick
from edgehub.hub.control.memory_budget import SlotChoice, SlotOption, fit_budget
from edgehub.hub.control.planner import SlotWant, desired_of_plan, plan_device
from edgehub.hub.control.selection import Policy, select_variant
from edgehub.hub.control.targets import Target, resolve_targets
from edgehub.hub.control.tuning import choose_pair, tuning_plan
from edgehub.hub.fleet.groups import GroupSelector, parse_selector
from edgehub.hub.fleet.records import AliasRecord, DeviceFacts, RolloutOutcome, SelectionRecord
from edgehub.hub.fleet.sql import chunks
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.rollout.machine import RolloutState, late_member_stage, member_outcome
from edgehub.protocol.messages import MAX_SLOTS, BenchmarkReport, BenchmarkSettings, Candidate, DesiredState
from edgehub.protocol.runtime_settings import TuningPlan
from edgehub.protocol.telemetry import FieldReference, TelemetrySettings
from edgehub.zoo.profiles import Profile
from edgehub.zoo.records import VariantRecord, utcnow
from edgehub.zoo.registry import Registry

log = logging.getLogger("edgehub.hub.fleet")

CHUNK = 500


@dataclass
class Writes:
    """Everything one chunk decided; saved in one transaction."""

    desired: list[DesiredState] = field(default_factory=list)
    selections: list[SelectionRecord] = field(default_factory=list)
    samples: list = field(default_factory=list)
    decisions: list = field(default_factory=list)
    outcomes: list[RolloutOutcome] = field(default_factory=list)
    members: list[tuple[int, str, int]] = field(default_factory=list)
    left: list[tuple[int, str]] = field(default_factory=list)
    changes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Work:
    """One device with a target that has variants for its profile."""

    device: DeviceFacts
    target: Target
    variants: list[VariantRecord]
    member_status: str | None  # its outcome in the rollout that targets it
    refused: dict[str, str] = field(default_factory=dict)  # variant id -> why the device cannot load it

    @property
    def variant_ids(self) -> list[str]:
        return [v.id for v in self.variants]


class FleetReconciler:
    def __init__(self, registry: Registry, fleet: FleetStore, profiles: dict[str, Profile], policy: Policy,
                 benchmark: BenchmarkSettings, cohort_policy: cohorts.CohortPolicy | None,
                 candidate: Callable[[str, VariantRecord], Candidate], telemetry_interval_s: float = 60.0,
                 tune_budget_s: float = 0.0):
        self.registry, self.fleet, self.profiles = registry, fleet, profiles
        self.policy, self.benchmark, self.cohort_policy = policy, benchmark, cohort_policy
        self.candidate = candidate
        self.telemetry_interval_s = telemetry_interval_s
        self.tune_budget_s = tune_budget_s
        self._references: dict[str | None, FieldReference | None] = {}
        self._variants: dict[tuple[str, int, str], list[VariantRecord]] = {}
        self._version_of: dict[str, tuple[str, int] | None] = {}
        self.production: dict[str, list[AliasRecord]] = {}  # scope -> its production aliases, one per model
        self.rollouts: dict[int, tuple[RolloutState, GroupSelector]] = {}
        self.refresh()

    # -- snapshots and caches (aliases and rollouts are few; variants never change) ----------------

    def refresh(self) -> None:
        self.production = {}
        for a in self.fleet.aliases():
            if a.name == "production":
                self.production.setdefault(a.scope, []).append(a)
        self.rollouts = {r.id: (RolloutState.model_validate(r.state), parse_selector(r.selector))
                         for r in self.fleet.rollouts(active_only=True)}

    def variants(self, model: str, version: int, profile: str) -> list[VariantRecord]:
        key = (model, version, profile)
        if key not in self._variants:
            found = [v for v in self.registry.variants_for_profile(model, version, profile)
                     if v.signed_manifest is not None]
            if not found:
                return []  # not cached: the version may be registered later
            self._variants[key] = found
            for v in found:
                self._version_of[v.id] = (v.model, v.version)
        return self._variants[key]

    def version_of(self, variant_id: str) -> tuple[str, int] | None:
        if variant_id not in self._version_of:
            v = self.registry.get_variant(variant_id)
            self._version_of[variant_id] = (v.model, v.version) if v else None
        return self._version_of[variant_id]

    def field_reference(self, variant_id: str | None) -> FieldReference | None:
        """The eval set's bins of a variant's version (publish: notes.field_reference); cached."""
        if variant_id not in self._references:
            v = self.registry.get_variant(variant_id) if variant_id else None
            data = v.notes.get("field_reference") if v else None
            self._references[variant_id] = FieldReference.model_validate(data) if data else None
        return self._references[variant_id]

    def telemetry_for(self, variants: list[VariantRecord]) -> TelemetrySettings | None:
        """What the device reports from the field for these candidates (one model version: one reference)."""
        if self.telemetry_interval_s <= 0:
            return None
        reference = self.field_reference(variants[0].id) if variants else None
        return TelemetrySettings(interval_s=self.telemetry_interval_s, reference=reference)

    def tuning_for(self, d: DeviceFacts, slots: int = 1) -> TuningPlan | None:
        """The runtime settings a v2 device measures on its leading variants (None: tuning is off).
        The budget is the device's: `slots` models that tune share it equally."""
        if self.tune_budget_s <= 0 or d.protocol < 2:
            return None
        return tuning_plan(d.profile, d.cores, d.runtimes, self.tune_budget_s / max(1, slots))

    def policy_for(self, profile_name: str) -> Policy:
        profile = self.profiles.get(profile_name)
        if profile is not None and profile.memory_limit_mb and self.policy.memory_limit_mb is None:
            return self.policy.model_copy(update={"memory_limit_mb": float(profile.memory_limit_mb)})
        return self.policy

    def outcomes_for(self, events: Iterable) -> list[RolloutOutcome]:
        """Rollout outcomes carried by activation results (ok: activated and healthy)."""
        found = []
        for e in events:
            if getattr(e, "kind", None) != "activation":
                continue
            version = self.version_of(e.variant_id)
            for rollout_id, (state, _) in self.rollouts.items():
                if version == (state.spec.model, state.spec.version):
                    status, detail = member_outcome(activation_ok=e.ok, error=e.error)
                    found.append(RolloutOutcome(rollout_id=rollout_id, device_id=e.device_id, status=status,
                                                variant_id=e.variant_id, detail=detail))
        return found

    # -- reconcile ----------------------------------------------------------------------------------

    def reconcile(self, device_ids: Iterable[str]) -> Iterator[DesiredState]:
        """Bring these devices' desired states up to date, a chunk (one transaction) at a time;
        yields each new desired state once its chunk is committed, for the caller to publish."""
        for chunk in chunks(sorted(set(device_ids)), CHUNK):
            yield from self._reconcile_chunk(chunk)

    def _membership(self, d: DeviceFacts, mine: list[tuple[int, int, str]], writes: Writes) -> list[tuple[int, int, str]]:
        """Join active rollouts whose group the device is now in (at the last stage); leave the
        ones whose group it left."""
        member_of = {m[0] for m in mine}
        for rollout_id, (state, selector) in self.rollouts.items():
            matches = selector.matches(d.profile, d.tags)
            if matches and rollout_id not in member_of and self.variants(state.spec.model, state.spec.version,
                                                                          d.profile):
                stage = late_member_stage(state.spec)
                writes.members.append((rollout_id, d.id, stage))
                mine = [*mine, (rollout_id, stage, "pending")]
            elif not matches and rollout_id in member_of:
                writes.left.append((rollout_id, d.id))
                mine = [m for m in mine if m[0] != rollout_id]
        return mine

    def _work_of(self, devices: dict[str, DeviceFacts], writes: Writes) -> tuple[dict[str, dict[str, Work]],
                                                                                 dict[str, set[str]]]:
        """model -> device -> Work, for every targeted model with variants for the device's profile
        (a v1 agent: its newest target only); and device -> models targeted without variants yet."""
        memberships = self.fleet.rollout_members(devices)
        states = {rid: state for rid, (state, _) in self.rollouts.items()}
        work: dict[str, dict[str, Work]] = {}
        waiting: dict[str, set[str]] = {}
        for d in devices.values():
            mine = self._membership(d, memberships.get(d.id, []), writes)
            targets = resolve_targets(d.profile, d.tags, self.production, mine, states)
            for target in targets[:MAX_SLOTS] if d.protocol >= 2 else targets[:1]:
                variants, refused = loadable(self.variants(target.model, target.version, d.profile), d.runtimes)
                if not variants and not refused:
                    waiting.setdefault(d.id, set()).add(target.model)
                    continue
                status = next((s for rid, _, s in mine if rid == target.rollout), None)
                work.setdefault(target.model, {})[d.id] = Work(device=d, target=target, variants=variants,
                                                               member_status=status, refused=refused)
        return work, waiting

    def _reconcile_chunk(self, ids: list[str]) -> list[DesiredState]:
        writes = Writes()
        devices = self.fleet.device_facts(ids)
        work, waiting = self._work_of(devices, writes)
        slots_of: dict[str, list[Work]] = {}
        for by_device in work.values():
            for device_id, w in by_device.items():
                slots_of.setdefault(device_id, []).append(w)
        current = self.fleet.desired_summaries(slots_of)
        reported = self.fleet.reported_variants(slots_of)
        # Report bodies only where a decision can be made: a slot with every candidate measured,
        # or any member of a cohort (a follower measures one variant, samples decide for others).
        cohort_mode = self.cohort_policy is not None
        wanted = [d for d, ws in slots_of.items() if any(
            (cohort_mode and w.device.cohort and reported.get(d)) or set(w.variant_ids) <= reported.get(d, set())
            for w in ws)]
        variant_ids = {v for d in wanted for w in slots_of[d] for v in w.variant_ids}
        reports = self.fleet.report_facts(wanted, variant_ids)
        tuned = self.fleet.tuned_reports(wanted, variant_ids) if self.tune_budget_s > 0 else {}

        picks: dict[tuple[str, str], DevicePick] = {}
        if self.cohort_policy is not None:
            planner = CohortPlanner(self, self.cohort_policy)
            for model, by_device in work.items():  # one model at a time: samples are per model version
                planned = planner.plan({d: w for d, w in by_device.items() if w.device.cohort}, reports, writes)
                picks.update({(d, model): p for d, p in planned.items()})
        new_selections: dict[tuple[str, str], SelectionRecord] = {}
        for device_id, ws in slots_of.items():
            mine = {w.target.model: picks.get((device_id, w.target.model))
                    or self._own_pick(w, reports.get(device_id, {}), tuned.get(device_id, [])) for w in ws}
            if len(ws) > 1:
                mine = self._within_memory(ws, mine, reports.get(device_id, {}))
            wants, keep = [], set(waiting.get(device_id, ()))
            tuning_slots = sum(1 for p in mine.values() if not (p.follower or p.left_out or p.candidate_ids is None))
            for w in ws:
                pick = mine[w.target.model]
                if pick.selection is not None and w.refused:  # explain names what was never sent, and why
                    pick.selection = pick.selection.model_copy(update={"explanation": {
                        **pick.selection.explanation, "not_sent": [{"variant_id": v, "reason": why}
                                                                   for v, why in sorted(w.refused.items())]}})
                if pick.selection is not None:
                    new_selections[(device_id, w.target.model)] = pick.selection
                self._rollout_outcome(w, pick, writes)
                if pick.left_out:
                    continue  # over the device's memory with its other models: the slot goes
                if pick.candidate_ids is None:
                    keep.add(w.target.model)  # waiting for the cohort: the slot stays as it is
                else:
                    wants.append(SlotWant(target=w.target.key, candidate_ids=tuple(pick.candidate_ids),
                                          winner=pick.winner, settings=pick.settings,
                                          tuning=None if pick.follower else self.tuning_for(w.device, tuning_slots)))
            device = ws[0].device
            plan = plan_device(current.get(device_id), wants, keep, self.benchmark, device.protocol)
            if plan is not None:
                by_id = {v.id: v for w in ws for v in w.variants}
                variants_of = {w.target.model: w.variants for w in ws}
                candidates = {s.model: [self.candidate(device_id, by_id[v]) for v in s.candidate_ids if v in by_id]
                              for s in plan.slots}
                telemetry = {s.model: self.telemetry_for(variants_of.get(s.model) or []) for s in plan.slots}
                writes.desired.append(desired_of_plan(device_id, plan, candidates, telemetry))
        previous = self.fleet.selection_digests({d for d, _ in new_selections})
        writes.selections = [r for k, r in new_selections.items() if previous.get(k) != r.digest()]
        self.fleet.save_plans(desired=writes.desired, selections=writes.selections, samples=writes.samples,
                              decisions=writes.decisions, outcomes=writes.outcomes, members=writes.members,
                              left=writes.left, changes=writes.changes)
        return writes.desired

    def _within_memory(self, ws: list[Work], picks: dict[str, DevicePick],
                       own: dict[str, BenchmarkReport]) -> dict[str, DevicePick]:
        """The slots' winners, moved or left out where together they exceed the device's memory."""
        device = ws[0].device
        limit = self.policy_for(device.profile).memory_limit_mb
        choices = []
        for w in ws:
            pick = picks[w.target.model]
            if pick.winner is None:
                continue
            verdicts = (pick.selection.explanation.get("own") or pick.selection.explanation
                        if pick.selection else {}).get("verdicts", [])
            others = sorted((v for v in verdicts if v.get("eligible") and v["variant_id"] != pick.winner
                             and v["variant_id"] in own), key=lambda v: v.get("p50_ms") or 0)
            options = [pick.winner, *(v["variant_id"] for v in others)]
            choices.append(SlotChoice(model=w.target.model, running=device.runs(pick.winner), options=[
                SlotOption(variant_id=v, peak_mb=own[v].peak_rss_mb if v in own else None,
                           p50_ms=own[v].latency.p50_ms if v in own and own[v].latency else None) for v in options]))
        outcome = fit_budget(choices, limit)
        changed = dict(picks)
        for model, why in outcome.reasons.items():
            pick = picks[model]
            winner = outcome.winners[model]
            selection = pick.selection.model_copy(update={
                "winner": winner, "explanation": {**pick.selection.explanation, "winner": winner,
                                                  "memory": {"limit_mb": limit, "reason": why}}}) \
                if pick.selection else None
            changed[model] = DevicePick(candidate_ids=pick.candidate_ids, winner=winner, selection=selection,
                                        nothing_eligible=pick.nothing_eligible or winner is None,
                                        left_out=winner is None,
                                        settings=pick.settings if winner == pick.winner else None)
        return changed

    def _own_pick(self, w: Work, own: dict[str, BenchmarkReport], tuned: list[BenchmarkReport]) -> DevicePick:
        """Per-device selection: benchmark every candidate, activate the device's own winner (with
        the runtime settings of its best measured pair, when the device tuned them)."""
        if not all(v in own for v in w.variant_ids):
            return DevicePick(candidate_ids=w.variant_ids, winner=None, selection=None)
        policy = self.policy_for(w.device.profile)
        selection = select_variant(facts_of(w.variants), own, policy, reference_accuracy=reference_accuracy(w.variants))
        winner, settings, explanation = selection.winner, None, selection.explain()
        mine = [t for t in tuned if t.variant_id in set(w.variant_ids)]
        if mine and winner is not None:
            profile = self.profiles.get(w.device.profile)
            choice = choose_pair(selection, own, mine, {v.id: v.size_bytes for v in w.variants}, policy,
                                 min_coverage=getattr(profile, "min_accelerator_coverage", None))
            winner, settings = choice.variant_id, choice.settings
            explanation = {**explanation, "winner": winner, "pairs": choice.explain()["pairs"],
                           "settings": settings.model_dump(mode="json", exclude_defaults=True) if settings else None}
        record = SelectionRecord(device_id=w.device.id, model=w.target.model, version=w.target.version,
                                 winner=winner, explanation=explanation, decided_at=utcnow())
        return DevicePick(candidate_ids=w.variant_ids, winner=winner, selection=record,
                          nothing_eligible=winner is None, settings=settings)

    @staticmethod
    def _rollout_outcome(w: Work, pick: DevicePick, writes: Writes) -> None:
        if w.target.rollout is None or w.member_status != "pending":
            return
        # Already running the new version's winner (e.g. a late member) counts as activated.
        outcome = member_outcome(nothing_eligible=pick.nothing_eligible, running_new_winner=(
            w.device.runs(pick.winner)))
        if outcome is not None:
            status, detail = outcome
            writes.outcomes.append(RolloutOutcome(rollout_id=w.target.rollout, device_id=w.device.id, status=status,
                                                  variant_id=pick.winner if status == "activated" else None,
                                                  detail=detail))
