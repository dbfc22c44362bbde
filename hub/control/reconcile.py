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
from edgehub.hub.control.candidates import facts_of, reference_accuracy
from edgehub.hub.control.cohort_plan import CohortPlanner, DevicePick
from edgehub.hub.control.planner import desired_from, settle
from edgehub.hub.control.selection import Policy, select_variant
from edgehub.hub.control.targets import Target, resolve_target
from edgehub.hub.fleet.groups import GroupSelector, parse_selector
from edgehub.hub.fleet.records import AliasRecord, DeviceFacts, RolloutOutcome, SelectionRecord
from edgehub.hub.fleet.sql import chunks
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.rollout.machine import RolloutState, late_member_stage, member_outcome
from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings, Candidate, DesiredState
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

    @property
    def variant_ids(self) -> list[str]:
        return [v.id for v in self.variants]


class FleetReconciler:
    def __init__(self, registry: Registry, fleet: FleetStore, profiles: dict[str, Profile], policy: Policy,
                 benchmark: BenchmarkSettings, cohort_policy: cohorts.CohortPolicy | None,
                 candidate: Callable[[str, VariantRecord], Candidate], telemetry_interval_s: float = 60.0):
        self.registry, self.fleet, self.profiles = registry, fleet, profiles
        self.policy, self.benchmark, self.cohort_policy = policy, benchmark, cohort_policy
        self.candidate = candidate
        self.telemetry_interval_s = telemetry_interval_s
        self._references: dict[str | None, FieldReference | None] = {}
        self._variants: dict[tuple[str, int, str], list[VariantRecord]] = {}
        self._version_of: dict[str, tuple[str, int] | None] = {}
        self.production: dict[str, AliasRecord] = {}
        self.rollouts: dict[int, tuple[RolloutState, GroupSelector]] = {}
        self.refresh()

    # -- snapshots and caches (aliases and rollouts are few; variants never change) ----------------

    def refresh(self) -> None:
        self.production = {a.scope: a for a in self.fleet.aliases() if a.name == "production"}
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

    def _reconcile_chunk(self, ids: list[str]) -> list[DesiredState]:
        writes = Writes()
        devices = self.fleet.device_facts(ids)
        memberships = self.fleet.rollout_members(devices)
        states = {rid: state for rid, (state, _) in self.rollouts.items()}
        work: dict[str, Work] = {}
        for d in devices.values():
            mine = self._membership(d, memberships.get(d.id, []), writes)
            target = resolve_target(d.profile, d.tags, self.production, mine, states)
            variants = self.variants(target.model, target.version, d.profile) if target else []
            if target is not None and variants:
                status = next((s for rid, _, s in mine if rid == target.rollout), None)
                work[d.id] = Work(device=d, target=target, variants=variants, member_status=status)
        current = self.fleet.desired_summaries(work)
        reported = self.fleet.reported_variants(work)
        # Report bodies only where a decision can be made: a device with every candidate measured,
        # or any member of a cohort (a follower measures one variant, samples decide for others).
        cohort_mode = self.cohort_policy is not None
        wanted = [d for d, w in work.items() if (cohort_mode and w.device.cohort and reported.get(d))
                  or set(w.variant_ids) <= reported.get(d, set())]
        reports = self.fleet.report_facts(wanted, {v for d in wanted for v in work[d].variant_ids})

        picks: dict[str, DevicePick] = {}
        if self.cohort_policy is not None:
            planner = CohortPlanner(self, self.cohort_policy)
            picks = planner.plan({d: w for d, w in work.items() if w.device.cohort}, reports, writes)
        new_selections: dict[str, SelectionRecord] = {}
        for device_id, w in work.items():
            pick = picks.get(device_id) or self._own_pick(w, reports.get(device_id, {}))
            if pick.selection is not None:
                new_selections[device_id] = pick.selection
            self._rollout_outcome(w, pick, writes)
            if pick.candidate_ids is None:
                continue  # waiting for the cohort: the device keeps its desired state
            plan = settle(current.get(device_id), w.target.key, pick.candidate_ids, pick.winner, self.benchmark)
            if plan is not None:
                by_id = {v.id: v for v in w.variants}
                writes.desired.append(desired_from(device_id, plan, [self.candidate(device_id, by_id[v])
                                                                     for v in plan.candidate_ids],
                                                   telemetry=self.telemetry_for(w.variants)))
        previous = self.fleet.selection_digests(new_selections)
        writes.selections = [r for d, r in new_selections.items() if previous.get(d) != r.digest()]
        self.fleet.save_plans(desired=writes.desired, selections=writes.selections, samples=writes.samples,
                              decisions=writes.decisions, outcomes=writes.outcomes, members=writes.members,
                              left=writes.left, changes=writes.changes)
        return writes.desired

    def _own_pick(self, w: Work, own: dict[str, BenchmarkReport]) -> DevicePick:
        """Per-device selection: benchmark every candidate, activate the device's own winner."""
        if not all(v in own for v in w.variant_ids):
            return DevicePick(candidate_ids=w.variant_ids, winner=None, selection=None)
        selection = select_variant(facts_of(w.variants), own, self.policy_for(w.device.profile),
                                   reference_accuracy=reference_accuracy(w.variants))
        record = SelectionRecord(device_id=w.device.id, model=w.target.model, version=w.target.version,
                                 winner=selection.winner, explanation=selection.explain(), decided_at=utcnow())
        return DevicePick(candidate_ids=w.variant_ids, winner=selection.winner, selection=record,
                          nothing_eligible=selection.winner is None)

    @staticmethod
    def _rollout_outcome(w: Work, pick: DevicePick, writes: Writes) -> None:
        if w.target.rollout is None or w.member_status != "pending":
            return
        # Already running the new version's winner (e.g. a late member) counts as activated.
        outcome = member_outcome(nothing_eligible=pick.nothing_eligible, running_new_winner=(
            w.device.active_variant is not None and w.device.active_variant == pick.winner))
        if outcome is not None:
            status, detail = outcome
            writes.outcomes.append(RolloutOutcome(rollout_id=w.target.rollout, device_id=w.device.id, status=status,
                                                  variant_id=pick.winner if status == "activated" else None,
                                                  detail=detail))
