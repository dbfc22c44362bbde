"""The interface every on-device inference runtime implements (ONNX Runtime, LiteRT, ...).

A Runtime is cheap to construct and must not import its inference library until `load` (or
`version`, when it cannot be read from package metadata): the agent lists runtimes while idle
and should stay small. Sessions are used only inside the benchmark child process.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from edgehub.protocol.manifest import TensorSpec
from edgehub.protocol.runtime_settings import Coverage, RuntimeSettings


class RuntimeUnavailable(Exception):
    """No installed runtime can run the requested model format."""


class NotApplicable(Exception):
    """A runtime setting this device's runtime does not have (a provider it lacks, more threads
    than cores, another runtime's option): reported as such, not as a failure of the variant."""


def check_threads(settings: RuntimeSettings | None, cores: int) -> None:
    if settings is not None and settings.threads > cores:
        raise NotApplicable(f"{settings.threads} threads on a device with {cores} cores")


def only_threads(runtime: str, settings: RuntimeSettings | None, threads: int) -> int:
    """For runtimes whose only setting is the thread count: that count, or NotApplicable."""
    if settings is None:
        return threads
    if settings.provider is not None or settings.optimization is not None or settings.delegate is not None:
        raise NotApplicable(f"{runtime} has no provider, graph optimisation or delegate setting")
    check_threads(settings, os.cpu_count() or 1)
    return settings.threads or threads


class Session(ABC):
    """One loaded model, ready to run."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; returns the outputs in the order of `outputs`."""

    @abstractmethod
    def describe(self) -> dict:
        """What was actually used: at least {"providers": [...], "threads": int} (0 = default)."""


class Runtime(ABC):
    """A factory of Sessions for some model formats."""

    name: str
    formats: tuple[str, ...]

    @abstractmethod
    def available(self) -> bool:
        """True when the runtime's package is installed; must not raise."""

    @abstractmethod
    def version(self) -> str:
        """The runtime package's version; raises RuntimeUnavailable when it is not installed."""

    def prepare(self) -> None:  # noqa: B027 - an optional hook: most runtimes import nothing up front
        """Import the inference library now, so that timing `load` does not time the import."""

    @abstractmethod
    def load(self, path: Path, threads: int = 0, settings: RuntimeSettings | None = None) -> Session:
        """Create a session for the model at `path`; threads=0 keeps the runtime's default.
        `settings` (their threads win over `threads`) raise NotApplicable where this runtime
        lacks one."""

    def coverage(self, path: Path, settings: RuntimeSettings | None, feed: dict[str, np.ndarray]) -> Coverage | None:
        """Where one run of the model executed, as the runtime reports it (None: it cannot say)."""
        return None
