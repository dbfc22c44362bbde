"""The agent's reconcile step: make the device match the newest desired state.

Level-triggered: given the desired state it benchmarks, per model slot, every candidate it has
not reported yet, activates the variant the hub chose for the slot, and reports what it did; a
slot the desired state no longer names stops serving. Slots are independent: a failed health
check rolls back its own slot only. Running it twice on the same desired state does nothing the
second time.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Callable

from edgehub.agent.activation import activate, health_check
from edgehub.agent.benchmark import run_benchmark, to_report
from edgehub.agent.cache import make_room, touch
from edgehub.agent.config import AgentConfig, public_keys
from edgehub.agent.download import DownloadError, VerificationError, download, verify_artifact
from edgehub.agent.local_state import InstalledVariant, LocalState, StateFile
from edgehub.agent.runtimes import RuntimeUnavailable, runtime_for
from edgehub.agent.tls import client_context
from edgehub.agent.tuning import ROUNDS, TUNE_SHARE, contenders, median_index, pair_key, pairs_to_measure, split_key
from edgehub.protocol.compatibility import unmet
from edgehub.protocol.files import sha256_file
from edgehub.protocol.formats import suffix_of
from edgehub.protocol.manifest import SignatureError, verify_manifest
from edgehub.protocol.messages import (
    ActivationResult,
    AgentError,
    BenchmarkReport,
    Candidate,
    DesiredState,
    ModelSlot,
)
from edgehub.protocol.runtime_settings import DEFAULT_SETTINGS, RuntimeSettings

log = logging.getLogger("edgehub.agent")

REFERENCES_MAX_BYTES = 64 * 1024 * 1024  # reference inputs/outputs of a few samples: far less in practice


def new_event_id() -> str:
    return uuid.uuid4().hex


def verify_artifact_signature(c: Candidate, keys: list[bytes]) -> None:
    """The candidate's manifest is signed by a trusted key, or VerificationError."""
    try:
        verify_manifest(c.manifest, keys)
    except SignatureError as exc:
        raise VerificationError(f"manifest rejected: {exc}") from exc


class Reconciler:
    def __init__(self, config: AgentConfig, store: StateFile, publish_event: Callable[[object], None],
                 load_rpm: Callable[[str], float] | None = None, runtimes: dict[str, str] | None = None):
        self.config = config
        self.runtimes = runtimes  # name -> version of this device's runtimes (None: not checked)
        self.load_rpm = load_rpm  # slot -> the other slots' requests per minute now (agent/load.py)
        self.v2 = config.protocol >= 2
        self.store = store
        self.state: LocalState = store.load()
        self.publish_event = publish_event
        self.public_keys = public_keys(config)
        self.cache_dir = config.data_dir / "cache"
        self._ssl = None  # made on the first https download

    # -- fetching ---------------------------------------------------------------------------

    def _fetch(self, c: Candidate) -> InstalledVariant:
        """Download and verify a candidate (and its reference outputs); raise on any mismatch.

        A variant already in the cache is verified again (sha256 and signature) before it is
        used: a file changed on disk since it was downloaded is never loaded."""
        installed = self.state.installed.get(c.variant_id)
        if installed is not None and installed.sha256 == c.sha256 and installed.path.exists():
            try:
                verify_artifact(installed.path, installed.manifest, self.public_keys)
                refs, refs_sha = installed.references_path, installed.manifest.manifest.references_sha256
                if refs is not None and (not refs.exists() or sha256_file(refs) != refs_sha):
                    raise VerificationError(f"reference file {refs.name} changed on disk")
                touch(self.state, c.variant_id)
                return installed
            except VerificationError as exc:
                log.warning("cached %s failed verification (%s); downloading it again", c.variant_id, exc)
                installed.path.unlink(missing_ok=True)
                if installed.references_path is not None:
                    installed.references_path.unlink(missing_ok=True)
        manifest = c.manifest.manifest
        if manifest.variant_id != c.variant_id or manifest.sha256 != c.sha256 or manifest.size_bytes != c.size_bytes:
            raise VerificationError(f"manifest is for {manifest.variant_id}/{manifest.sha256[:12]}, "
                                    f"not {c.variant_id}/{c.sha256[:12]}")
        # The signature first: an unsigned or foreign manifest costs no download.
        verify_artifact_signature(c, self.public_keys)
        dest = self.cache_dir / f"{c.sha256}{suffix_of(c.format) or '.bin'}"
        make_room(self.state, self.cache_dir, dest, c.size_bytes, limit_mb=self.config.cache_limit_mb,
                  min_free_mb=self.config.min_free_mb)
        self.store.save(self.state)  # evictions, if any, before the bytes arrive
        options = dict(username=self.config.username, password=self.config.password.get_secret_value(),
                       ssl_context=self._tls_context(c.url))
        path = download(c.url, dest, sha256=c.sha256, size=c.size_bytes, **options)
        try:
            verify_artifact(path, c.manifest, self.public_keys)
        except (VerificationError, SignatureError):
            path.unlink(missing_ok=True)  # never keep what failed verification
            raise
        references = None
        if c.references_url and manifest.references_sha256:
            # Its size is not in the manifest: cap it, so a lying server cannot fill the disk.
            references = download(c.references_url, self.cache_dir / f"{manifest.references_sha256}.npz",
                                  sha256=manifest.references_sha256, size=None, max_bytes=REFERENCES_MAX_BYTES,
                                  **options)
        installed = InstalledVariant(variant_id=c.variant_id, sha256=c.sha256, format=c.format, path=path,
                                     references_path=references, manifest=c.manifest, last_used=time.time())
        self.state.installed[c.variant_id] = installed
        self.store.save(self.state)
        return installed

    def _tls_context(self, url: str):
        if not url.startswith("https:"):
            return None
        if self._ssl is None:
            self._ssl = client_context(self.config.ca_file)
        return self._ssl

    # -- one reconcile pass -----------------------------------------------------------------------

    def _slot_fields(self, slot: ModelSlot) -> dict:
        """What a v2 event adds: its slot (a v1 agent's events have neither field)."""
        return dict(schema_version=2, slot=slot.model) if self.v2 else {}

    def _failed_report(self, desired: DesiredState, slot: ModelSlot, c: Candidate, error: str) -> BenchmarkReport:
        return BenchmarkReport(event_id=new_event_id(), device_id=self.config.device_id,
                               generation=desired.generation, variant_id=c.variant_id, ok=False, error=error,
                               **self._slot_fields(slot))

    def _measure(self, desired: DesiredState, slot: ModelSlot, c: Candidate, installed: InstalledVariant,
                 settings=None) -> BenchmarkReport:
        # The other slots keep serving meanwhile (the benchmark runs in a child): label the load.
        load_before = self.load_rpm(slot.model) if self.load_rpm and self.v2 else None
        result = run_benchmark(installed.path, c.format, installed.references_path, desired.benchmark,
                               runtime_settings=settings)
        report = to_report(result, new_event_id(), self.config.device_id, desired.generation, c.variant_id)
        if self.v2:
            load = max(load_before or 0.0, self.load_rpm(slot.model)) if self.load_rpm else None
            report = report.model_copy(update={**self._slot_fields(slot), "load_rpm": load})
        return report

    def _tune(self, desired: DesiredState, slot: ModelSlot) -> bool:
        """Measure the leading candidates under the slot's tuning plan, within its time budget;
        then measure the contending pairs again, interleaved, and report each one's median run."""
        plan = slot.tuning
        if plan is None or not self.v2:
            return True
        by_id = {c.variant_id: c for c in slot.candidates}
        measured = {v: self.state.default_p50.get(v) for v in by_id if v in self.state.default_p50}
        done = {k for k in self.state.benchmarked if "@" in k}
        budget = f"{slot.model}:{slot.version}"
        spent = self.state.tuning_spent_s.get(budget, 0.0)
        started = time.monotonic() - spent  # the budget counts across passes
        for variant_id, settings in pairs_to_measure(plan, measured, done):
            if time.monotonic() - started > plan.budget_s * TUNE_SHARE:
                if spent <= plan.budget_s * TUNE_SHARE:  # said once, not on every later pass
                    log.info("tuning of %s stopped: its share of the %.0f s budget is spent", slot.model,
                             plan.budget_s)
                break
            c = by_id[variant_id]
            log.info("tuning %s with %s", variant_id, settings.key())
            report = self._run_pair(desired, slot, c, settings)
            if report is None:
                continue
            self.publish_event(report)
            key = pair_key(variant_id, settings)
            self.state.benchmarked[key] = c.sha256
            self.state.pair_p50[key] = report.latency.p50_ms if report.ok and report.latency else None
            self.state.tuning_spent_s[budget] = time.monotonic() - started
            self.store.save(self.state)
        if self._confirm(desired, slot, by_id, started):
            self.state.tuning_spent_s[budget] = time.monotonic() - started
            self.store.save(self.state)
        return True

    def _confirm(self, desired: DesiredState, slot: ModelSlot, by_id: dict[str, Candidate], started: float) -> bool:
        """The contenders (agent/tuning.py) measured ROUNDS more times, interleaved; a pair whose
        median run is a new one has that run reported (the hub keeps the newest per pair). True
        when it measured."""
        plan = slot.tuning
        p50s = {pair_key(v, DEFAULT_SETTINGS): self.state.default_p50.get(v) for v in by_id}
        p50s.update({k: p for k, p in self.state.pair_p50.items() if k.rpartition("@")[0] in by_id})
        keys = contenders(p50s)
        marker = "confirmed@" + "|".join(sorted(f"{k}:{by_id[k.rpartition('@')[0]].sha256[:12]}" for k in keys))
        if not keys or marker in self.state.benchmarked:
            return False
        runs: dict[str, list[BenchmarkReport]] = {k: [] for k in keys}
        for _ in range(ROUNDS):
            for key in keys:
                if time.monotonic() - started > plan.budget_s:
                    break
                variant_id, settings = split_key(key)
                report = self._run_pair(desired, slot, by_id[variant_id], settings)
                if report is not None:
                    runs[key].append(report)
        for key, reports in runs.items():
            ok = [r for r in reports if r.ok and r.latency]
            if not ok:
                continue
            p50s_of = [p50s[key], *(r.latency.p50_ms for r in ok)]
            pick = median_index(p50s_of)
            log.info("confirmed %s: p50 %s ms, keeping the median", key, ", ".join(f"{p:.3f}" for p in p50s_of))
            if pick > 0:
                self.publish_event(ok[pick - 1])
        self.state.benchmarked[marker] = "1"
        return True

    def _run_pair(self, desired: DesiredState, slot: ModelSlot, c: Candidate,
                  settings: RuntimeSettings) -> BenchmarkReport | None:
        """One candidate measured under `settings` (the cached file, verified again); None, logged,
        when it cannot be fetched."""
        try:
            installed = self._fetch(c)
        except (VerificationError, SignatureError, DownloadError) as exc:
            log.warning("cannot measure %s with %s: %s", c.variant_id, settings.key(), exc)
            return None
        return self._measure(desired, slot, c, installed, None if settings.is_default() else settings)

    def _benchmark(self, desired: DesiredState, slot: ModelSlot, c: Candidate) -> bool:
        """Benchmark one candidate and report it; False if it should be retried later."""
        try:
            runtime_for(c.format)
        except RuntimeUnavailable as exc:
            self._report(desired, c, self._failed_report(desired, slot, c, f"cannot run here: {exc}"))
            return True
        # The hub checked the manifest's requirements against the runtimes this device reported;
        # checked again here, before any download (the runtime may have changed since).
        why = unmet(c.manifest.manifest.requires, self.runtimes) if self.runtimes is not None else None
        if why is not None:
            self._report(desired, c, self._failed_report(desired, slot, c, f"cannot run here: {why}"))
            return True
        try:
            installed = self._fetch(c)
        except (VerificationError, SignatureError) as exc:
            self._report(desired, c, self._failed_report(desired, slot, c, f"rejected: {exc}"))
            return True
        except DownloadError as exc:
            self.publish_event(AgentError(event_id=new_event_id(), device_id=self.config.device_id,
                                          generation=desired.generation, variant_id=c.variant_id,
                                          error=f"download failed, will retry: {exc}"))
            return False
        log.info("benchmarking %s", c.variant_id)
        touch(self.state, c.variant_id)
        report = self._measure(desired, slot, c, installed)
        self.state.default_p50[c.variant_id] = report.latency.p50_ms if report.ok and report.latency else None
        self._report(desired, c, report)
        return True

    def _report(self, desired: DesiredState, c: Candidate, report: BenchmarkReport) -> None:
        self.publish_event(report)
        self.state.benchmarked[c.variant_id] = c.sha256
        self.store.save(self.state)

    def _activate(self, desired: DesiredState, slot: ModelSlot) -> bool:
        wanted, settings = slot.activate, slot.activate_settings
        current = self.state.slots.get(slot.model)
        if wanted is None or (current and current.active and current.active.variant_id == wanted
                              and current.settings == settings):
            return True
        candidate = next((c for c in slot.candidates if c.variant_id == wanted), None)
        event = dict(event_id=new_event_id(), device_id=self.config.device_id, generation=desired.generation,
                     variant_id=wanted, **self._slot_fields(slot))
        if candidate is None:
            self.publish_event(ActivationResult(ok=False, error="variant to activate is not among the candidates",
                                                **event))
            return True
        try:
            installed = self._fetch(candidate)
        except (VerificationError, SignatureError) as exc:
            self.publish_event(ActivationResult(ok=False, error=f"not activated: {exc}", **event))
            return True
        except DownloadError as exc:
            log.warning("download for activation failed, will retry: %s", exc)
            return False
        outcome = activate(self.state, self.store, installed,
                           check=lambda variant: health_check(variant, desired.benchmark, settings), slot=slot.model,
                           settings=settings)
        self.publish_event(ActivationResult(ok=outcome.ok, error=outcome.error,
                                            rolled_back_to=outcome.rolled_back_to, **event))
        log.info("activation of %s in slot %s: %s", wanted, slot.model, "ok" if outcome.ok else outcome.error)
        return True

    def _drop_slots(self, keep: set[str]) -> None:
        """Stop serving the models the hub no longer wants here (their files stay cached)."""
        gone = set(self.state.slots) - keep
        for model in sorted(gone):
            log.info("model %s is no longer wanted on this device; its slot is removed", model)
            del self.state.slots[model]
        if gone:
            self.store.save(self.state)

    def reconcile(self, desired: DesiredState) -> bool:
        """Act on `desired`; True when nothing is left to retry."""
        complete = True
        slots = desired.model_slots()
        for slot in slots:
            for c in slot.candidates:
                if self.state.benchmarked.get(c.variant_id) == c.sha256:
                    continue
                complete &= self._benchmark(desired, slot, c)
            complete &= self._tune(desired, slot)
            complete &= self._activate(desired, slot)
        if slots and desired.slots is not None:
            self._drop_slots({s.model for s in slots})
        elif slots and self.state.slots.get(slots[0].model) and self.state.slots[slots[0].model].active:
            # A v1 body: the device runs one model. The old model serves until the new one is active.
            self._drop_slots({slots[0].model})
        if self.state.generation_seen != desired.generation:
            self.state.generation_seen = desired.generation
            self.store.save(self.state)
        return complete

    def cached_variants(self) -> list[str]:
        return sorted(v for v, i in self.state.installed.items() if Path(i.path).exists())
