"""The agent's reconcile step: make the device match the newest desired state.

Level-triggered: given the desired state it benchmarks every candidate it has not reported yet,
activates the variant the hub chose, and reports what it did. Running it twice on the same
desired state does nothing the second time.
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
from edgehub.protocol.files import sha256_file
from edgehub.protocol.formats import suffix_of
from edgehub.protocol.manifest import SignatureError, verify_manifest
from edgehub.protocol.messages import ActivationResult, AgentError, BenchmarkReport, Candidate, DesiredState

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
    def __init__(self, config: AgentConfig, store: StateFile, publish_event: Callable[[object], None]):
        self.config = config
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

    def _failed_report(self, desired: DesiredState, c: Candidate, error: str) -> BenchmarkReport:
        return BenchmarkReport(event_id=new_event_id(), device_id=self.config.device_id,
                               generation=desired.generation, variant_id=c.variant_id, ok=False, error=error)

    def _benchmark(self, desired: DesiredState, c: Candidate) -> bool:
        """Benchmark one candidate and report it; False if it should be retried later."""
        try:
            runtime_for(c.format)
        except RuntimeUnavailable as exc:
            self._report(desired, c, self._failed_report(desired, c, f"cannot run here: {exc}"))
            return True
        try:
            installed = self._fetch(c)
        except (VerificationError, SignatureError) as exc:
            self._report(desired, c, self._failed_report(desired, c, f"rejected: {exc}"))
            return True
        except DownloadError as exc:
            self.publish_event(AgentError(event_id=new_event_id(), device_id=self.config.device_id,
                                          generation=desired.generation, variant_id=c.variant_id,
                                          error=f"download failed, will retry: {exc}"))
            return False
        log.info("benchmarking %s", c.variant_id)
        touch(self.state, c.variant_id)
        result = run_benchmark(installed.path, c.format, installed.references_path, desired.benchmark)
        report = to_report(result, new_event_id(), self.config.device_id, desired.generation, c.variant_id)
        self._report(desired, c, report)
        return True

    def _report(self, desired: DesiredState, c: Candidate, report: BenchmarkReport) -> None:
        self.publish_event(report)
        self.state.benchmarked[c.variant_id] = c.sha256
        self.store.save(self.state)

    def _activate(self, desired: DesiredState) -> bool:
        wanted = desired.activate
        if wanted is None or (self.state.active and self.state.active.variant_id == wanted):
            return True
        candidate = next((c for c in desired.candidates if c.variant_id == wanted), None)
        event = dict(event_id=new_event_id(), device_id=self.config.device_id, generation=desired.generation,
                     variant_id=wanted)
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
                           check=lambda variant: health_check(variant, desired.benchmark))
        self.publish_event(ActivationResult(ok=outcome.ok, error=outcome.error,
                                            rolled_back_to=outcome.rolled_back_to, **event))
        log.info("activation of %s: %s", wanted, "ok" if outcome.ok else outcome.error)
        return True

    def reconcile(self, desired: DesiredState) -> bool:
        """Act on `desired`; True when nothing is left to retry."""
        complete = True
        for c in desired.candidates:
            if self.state.benchmarked.get(c.variant_id) == c.sha256:
                continue
            complete &= self._benchmark(desired, c)
        complete &= self._activate(desired)
        if self.state.generation_seen != desired.generation:
            self.state.generation_seen = desired.generation
            self.store.save(self.state)
        return complete

    def cached_variants(self) -> list[str]:
        return sorted(v for v, i in self.state.installed.items() if Path(i.path).exists())
