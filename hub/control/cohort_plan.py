"""Cohort benchmarking for a batch of devices: who is sampled, the cohort's winner, and what each
member benchmarks and activates. The rules are in hub/control/cohorts.py; this is their I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgehub.hub.control import cohorts
from edgehub.hub.control.candidates import facts_of, reference_accuracy
from edgehub.hub.control.selection import select_variant
from edgehub.hub.control.tuning import pooled_settings
from edgehub.hub.fleet.records import CohortDecisionRecord, SelectionRecord
from edgehub.hub.rollout.machine import stage_rank
from edgehub.protocol.messages import BenchmarkReport
from edgehub.protocol.runtime_settings import RuntimeSettings
from edgehub.zoo.records import utcnow

if TYPE_CHECKING:
    from edgehub.hub.control.reconcile import FleetReconciler, Work, Writes

Key = tuple[str, str, int]  # (cohort, model, version)


@dataclass
class DevicePick:
    """What one device should benchmark (None: wait) and activate, and the decision to record."""

    candidate_ids: list[str] | None
    winner: str | None
    selection: SelectionRecord | None
    nothing_eligible: bool = False
    left_out: bool = False  # the device's memory cannot hold this model beside its others
    settings: object = None  # RuntimeSettings to run the winner with (None: the runtime's defaults)
    follower: bool = False  # a cohort member that runs the cohort's decision: it does not tune


def key_text(key: Key) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}"


def parse_key(text: str) -> Key:
    cohort, model, version = text.rsplit("|", 2)
    return cohort, model, int(version)


class CohortPlanner:
    def __init__(self, reconciler: FleetReconciler, policy: cohorts.CohortPolicy):
        self.r, self.policy = reconciler, policy

    def plan(self, work: dict[str, Work], reports: dict[str, dict[str, BenchmarkReport]],
             writes: Writes) -> dict[str, DevicePick]:
        groups: dict[Key, list[str]] = {}
        for device_id, w in work.items():
            groups.setdefault((w.device.cohort, w.target.model, w.target.version), []).append(device_id)
        samples = self.r.fleet.cohort_samples(groups)
        decisions = self.r.fleet.cohort_decisions(groups)
        picks: dict[str, DevicePick] = {}
        for key, members in groups.items():
            w0 = work[members[0]]
            sample = samples.get(key, {})
            decision = self._decide(key, w0, sample, decisions.get(key), work, reports, writes)
            # Also after a decision: one made before k members were seen (devices coming online
            # one by one, or another worker deciding first from its own members) gets more samples,
            # and is decided again as their reports come in.
            if decision is None or len(sample) < self.policy.sample_size:
                self._recruit(key, members, sample, work, reports, writes)
            for device_id in members:
                picks[device_id] = self._pick(key, work[device_id], sample, decision, reports.get(device_id, {}),
                                              writes)
        return picks

    def _decide(self, key: Key, w0: Work, sample: dict[str, str], decision: CohortDecisionRecord | None,
                work: dict, reports: dict, writes: Writes) -> CohortDecisionRecord | None:
        """Decide again when there is no decision yet or a sampled device is in this batch."""
        if not sample or (decision is not None and not any(s in work for s in sample)):
            return decision
        outside = [s for s in sample if s not in work]
        extra = self.r.fleet.report_facts(outside, w0.variant_ids) if outside else {}
        facts = self.r.fleet.device_facts(outside) if outside else {}
        sample_reports = {s: reports.get(s) or extra.get(s) or {} for s in sample}
        online = {s for s in sample if (work[s].device.online if s in work else facts.get(s) and facts[s].online)}
        verdict = cohorts.decide(self._facts(w0), sample_reports, online, self.r.policy_for(w0.device.profile),
                                 reference_accuracy=self._reference(w0))
        if verdict is None:
            return decision
        explanation = {**verdict.selection.explain(), "cohort": key[0], "samples": verdict.samples_used}
        if self.r.tune_budget_s > 0 and verdict.selection.winner is not None:
            # The runtime settings are shared too: pooled from the sampled devices' tuned runs.
            tuned = self.r.fleet.tuned_reports(list(sample), w0.variant_ids)
            runs = {s: [*sample_reports[s].values(), *tuned.get(s, [])] for s in sample}
            settings, pooled = pooled_settings(verdict.selection.winner, runs, self.r.policy_for(w0.device.profile))
            explanation.update(settings=settings.model_dump(mode="json", exclude_defaults=True) if settings else None,
                               pooled_pairs=pooled)
        new = CohortDecisionRecord(cohort=key[0], model=key[1], version=key[2], winner=verdict.selection.winner,
                                   reports_used=verdict.reports_used, explanation=explanation, decided_at=utcnow())
        if decision is not None and (decision.winner, decision.explanation) == (new.winner, new.explanation):
            return decision
        writes.decisions.append(new)
        if decision is None or decision.winner != new.winner:
            writes.changes.append(("cohort", key_text(key)))  # every member, on every hub worker
        return new

    def _recruit(self, key: Key, members: list[str], sample: dict[str, str], work: dict, reports: dict,
                 writes: Writes) -> None:
        variant_ids = work[members[0]].variant_ids
        done = set(cohorts.complete_devices({s: reports.get(s, {}) for s in sample if s in work}, variant_ids))
        alive = sum(1 for s in sample if s in done or s not in work or work[s].device.online)
        order = sorted((m for m in members if m not in sample), key=lambda m: stage_rank(m, key_text(key)))
        for device_id in cohorts.recruits(alive, len(sample), [(m, work[m].device.online) for m in order],
                                          self.policy):
            sample[device_id] = "sampled"
            writes.samples.append((key, device_id, "sampled"))

    def _pick(self, key: Key, w: Work, sample: dict[str, str], decision: CohortDecisionRecord | None,
              own: dict[str, BenchmarkReport], writes: Writes) -> DevicePick:
        policy = self.r.policy_for(w.device.profile)
        if w.device.id in sample:
            selection = select_variant(self._facts(w), own, policy, reference_accuracy=self._reference(w))
            if decision is None:
                return DevicePick(candidate_ids=w.variant_ids, winner=None, selection=None)
            verdicts = {v.variant_id: v for v in selection.verdicts}
            mine_ok = decision.winner is not None and verdicts[decision.winner].eligible
            winner = decision.winner if mine_ok else (selection.winner if selection.complete else None)
            return DevicePick(candidate_ids=w.variant_ids, winner=winner,
                              selection=self._record(w, key, decision, winner, selection.explain()),
                              nothing_eligible=selection.complete and winner is None,
                              settings=_settings_of(decision) if winner == decision.winner else None)
        if decision is None:
            return DevicePick(candidate_ids=None, winner=None, selection=None, follower=True)
        if decision.winner is None:
            return DevicePick(candidate_ids=None, winner=None, selection=self._record(w, key, decision, None, None),
                              nothing_eligible=True, follower=True)
        chosen = decision.winner
        report = own.get(chosen)
        if report is None:  # check it here first
            return DevicePick(candidate_ids=[chosen], winner=None, selection=None, follower=True)
        facts = [f for f in self._facts(w) if f.variant_id == chosen]
        mine = select_variant(facts, {chosen: report}, policy, reference_accuracy=self._reference(w))
        pooled = next((v for v in decision.explanation.get("verdicts", []) if v["variant_id"] == chosen), None)
        why = cohorts.disagreement(pooled, report, mine.winner == chosen, self.policy)
        winner = chosen if mine.winner == chosen else None
        candidate_ids = [chosen]
        if why is not None and len(sample) < self.policy.max_samples:
            sample[w.device.id] = f"disagreed: {why}"
            writes.samples.append((key, w.device.id, f"disagreed: {why}"[:300]))
            candidate_ids = w.variant_ids  # benchmark everything: the cohort decides again with it
        return DevicePick(candidate_ids=candidate_ids, winner=winner,
                          selection=self._record(w, key, decision, winner, mine.explain(), disagreement=why),
                          settings=_settings_of(decision) if winner is not None else None, follower=why is None)

    @staticmethod
    def _facts(w: Work):
        return facts_of(w.variants)

    @staticmethod
    def _reference(w: Work) -> float | None:
        return reference_accuracy(w.variants)

    @staticmethod
    def _record(w: Work, key: Key, decision: CohortDecisionRecord, winner: str | None, own: dict | None,
                disagreement: str | None = None) -> SelectionRecord:
        explanation = {"winner": winner, "complete": True, "verdicts": decision.explanation.get("verdicts", []),
                       "cohort": key[0], "cohort_winner": decision.winner,
                       "settings": decision.explanation.get("settings") if winner == decision.winner else None,
                       "pooled_pairs": decision.explanation.get("pooled_pairs"),
                       "samples": decision.explanation.get("samples", []), "own": own, "disagreement": disagreement}
        return SelectionRecord(device_id=w.device.id, model=key[1], version=key[2], winner=winner,
                               explanation=explanation, decided_at=utcnow())


def _settings_of(decision: CohortDecisionRecord) -> RuntimeSettings | None:
    """The runtime settings the cohort runs its winner with (None: the runtime's defaults)."""
    found = decision.explanation.get("settings")
    return RuntimeSettings.model_validate(found) if found else None
