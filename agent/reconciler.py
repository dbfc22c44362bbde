"""The agent's reconcile step: make the device match the newest desired state.

Level-triggered: given the desired state it benchmarks every candidate it has not reported yet,
activates the variant the hub chose, and reports what it did. Running it twice on the same
desired state does nothing the second time.
"""

from __future__ import annotations

import base64
import logging
import uuid
from pathlib import Path
from typing import Callable

from edgehub.agent.activation import activate
from edgehub.agent.benchmark import run_benchmark, to_report
from edgehub.agent.config import AgentConfig
from edgehub.agent.download import DownloadError, VerificationError, download, verify_artifact
from edgehub.agent.local_state import InstalledVariant, LocalState, StateFile
from edgehub.agent.messages import ActivationResult, AgentError, BenchmarkReport, Candidate, DesiredState
from edgehub.agent.protocol import SignatureError
from edgehub.agent.runtimes import RuntimeUnavailable, runtime_for

log = logging.getLogger("edgehub.agent")

SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "edgetpu": ".tflite", "coreml": ".mlpackage.zip"}


def new_event_id() -> str:
    return uuid.uuid4().hex


class Reconciler:
    def __init__(self, config: AgentConfig, store: StateFile, publish_event: Callable[[object], None]):
        self.config = config
        self.store = store
        self.state: LocalState = store.load()
        self.publish_event = publish_event
        self.public_key = base64.b64decode(config.hub_public_key)
        self.cache_dir = config.data_dir / "cache"

    # -- fetching ---------------------------------------------------------------------------

    def _fetch(self, c: Candidate) -> InstalledVariant:
        """Download and verify a candidate (and its reference outputs); raise on any mismatch."""
        installed = self.state.installed.get(c.variant_id)
        if installed is not None and installed.sha256 == c.sha256 and installed.path.exists():
            return installed
        manifest = c.manifest.manifest
        if manifest.variant_id != c.variant_id or manifest.sha256 != c.sha256:
            raise VerificationError(f"manifest is for {manifest.variant_id}/{manifest.sha256[:12]}, "
                                    f"not {c.variant_id}/{c.sha256[:12]}")
        credentials = dict(username=self.config.username, password=self.config.password.get_secret_value())
        path = download(c.url, self.cache_dir / f"{c.sha256}{SUFFIX.get(c.format, '.bin')}",
                        sha256=c.sha256, size=c.size_bytes, **credentials)
        try:
            verify_artifact(path, c.manifest, self.public_key)
        except (VerificationError, SignatureError):
            path.unlink(missing_ok=True)  # never keep what failed verification
            raise
        references = None
        if c.references_url and manifest.references_sha256:
            references = download(c.references_url, self.cache_dir / f"{manifest.references_sha256}.npz",
                                  sha256=manifest.references_sha256, size=None, **credentials)
        installed = InstalledVariant(variant_id=c.variant_id, sha256=c.sha256, format=c.format, path=path,
                                     references_path=references, manifest=c.manifest)
        self.state.installed[c.variant_id] = installed
        self.store.save(self.state)
        return installed

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
        outcome = activate(self.state, self.store, installed)
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
