"""Core ML (macOS only): runs the hub's zipped .mlpackage variants with coremltools.

The hub ships a package as one zip (`model.mlpackage/...` entries); it is extracted once next
to the downloaded file, with every entry checked to stay inside the target directory.
Prediction needs macOS: elsewhere the runtime reports itself unavailable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import numpy as np

from edgehub.agent.runtimes.base import Runtime, RuntimeUnavailable, Session, only_threads
from edgehub.protocol.coreml_package import (
    extract_mlpackage,
)
from edgehub.protocol.formats import COREML
from edgehub.protocol.manifest import TensorSpec
from edgehub.protocol.runtime_settings import RuntimeSettings

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def _installed_version() -> str | None:
    if importlib.util.find_spec("coremltools") is None:
        return None
    try:
        return importlib.metadata.version("coremltools")
    except importlib.metadata.PackageNotFoundError:
        return None


_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}


def _spec(feature, array_types) -> TensorSpec:
    array = feature.type.multiArrayType
    return TensorSpec(name=feature.name, dtype=_DTYPES.get(array_types.Name(array.dataType), "float32"),
                      shape=[int(d) for d in array.shape])


class CoreMLSession(Session):
    def __init__(self, model, spec, threads: int, compute_units: str):
        from coremltools.proto import FeatureTypes_pb2

        self._model = model
        self._threads = threads
        self._compute_units = compute_units
        array_types = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
        self.inputs = [_spec(f, array_types) for f in spec.description.input]
        self.outputs = [_spec(f, array_types) for f in spec.description.output]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._model.predict({k: np.ascontiguousarray(v) for k, v in feed.items()})
        return [np.asarray(result[spec.name]) for spec in self.outputs]

    def describe(self) -> dict:
        # Core ML schedules its own threads; the setting is recorded, not applied.
        return {"providers": [f"CoreML ({self._compute_units})"], "threads": self._threads}


class CoreMLRuntime(Runtime):
    name = "coreml"
    formats = (COREML,)

    def available(self) -> bool:
        return sys.platform == "darwin" and _installed_version() is not None

    def version(self) -> str:
        if sys.platform != "darwin":
            raise RuntimeUnavailable("Core ML runs only on macOS")
        version = _installed_version()
        if version is None:
            raise RuntimeUnavailable("coremltools is not installed (pip install coremltools)")
        return version

    def prepare(self) -> None:
        if self.available():
            import coremltools  # noqa: F401

    def load(self, path: Path, threads: int = 0, settings: RuntimeSettings | None = None, compute_units: str = "ALL") -> Session:
        threads = only_threads(self.name, settings, threads)
        self.version()  # raises with the reason when Core ML cannot run here
        import coremltools as ct

        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}")
        path = Path(path)
        package = path if path.is_dir() else extract_mlpackage(path, path.parent / f"{path.name}.unpacked")
        model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
        return CoreMLSession(model, model.get_spec(), threads, compute_units)
