"""The interface every on-device inference runtime implements (ONNX Runtime, LiteRT, ...).

A Runtime is cheap to construct and must not import its inference library until `load` (or
`version`, when it cannot be read from package metadata): the agent lists runtimes while idle
and should stay small. Sessions are used only inside the benchmark child process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from edgehub.protocol.manifest import TensorSpec


class RuntimeUnavailable(Exception):
    """No installed runtime can run the requested model format."""


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
    def load(self, path: Path, threads: int = 0) -> Session:
        """Create a session for the model at `path`; threads=0 keeps the runtime's default."""
