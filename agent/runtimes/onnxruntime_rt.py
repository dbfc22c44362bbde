"""ONNX Runtime: runs .onnx models on the best execution providers the installed build offers.

Thread spinning: ORT's intra-op threads spin for a while after each run waiting for more work.
We deliberately keep that default while benchmarking, because it is what a production process
doing back-to-back inference gets; turning it off (session.intra_op.allow_spinning=0) would add
wake-up latency to every run and make the numbers pessimistic. The cost is that a benchmark
process should hold only one live session at a time (NOTES.md).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np

from edgehub.agent.runtimes.base import NotApplicable, Runtime, RuntimeUnavailable, Session, check_threads
from edgehub.protocol.formats import ONNX
from edgehub.protocol.manifest import TensorSpec
from edgehub.protocol.runtime_settings import Coverage, RuntimeSettings

# Accelerators first; CPU is always appended as the fallback for unsupported nodes.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
)
CPU_PROVIDER = "CPUExecutionProvider"

# ORT type strings ("tensor(float)") -> numpy dtype names used in TensorSpec.
_DTYPES = {
    "float": "float32", "float16": "float16", "double": "float64", "bfloat16": "bfloat16",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "bool": "bool", "string": "str",
}


def _import_ort() -> ModuleType:
    # Without this ORT writes telemetry files under ~/.cache (NOTES.md); must precede the import.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable(f"onnxruntime is not installed ({exc})") from None
    if hasattr(onnxruntime, "disable_telemetry_events"):
        onnxruntime.disable_telemetry_events()
    return onnxruntime


def _spec(node) -> TensorSpec:
    kind = node.type[len("tensor("):-1] if node.type.startswith("tensor(") else node.type
    shape = [d if isinstance(d, (int, str)) else "?" for d in (node.shape or [])]
    return TensorSpec(name=node.name, dtype=_DTYPES.get(kind, kind), shape=shape)


def choose_providers(available: list[str]) -> list[str]:
    """The accelerators present, best first, then CPU."""
    return [p for p in PREFERRED_PROVIDERS if p in available] + [CPU_PROVIDER]


_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
           "disabled": "ORT_DISABLE_ALL"}


def _options(ort, threads: int, settings: RuntimeSettings | None) -> tuple[object, list[str], int]:
    """Session options and providers for `settings`, or NotApplicable."""
    s = settings or RuntimeSettings()
    if s.delegate is not None:
        raise NotApplicable("a LiteRT delegate setting does not apply to ONNX Runtime")
    check_threads(s, os.cpu_count() or 1)
    threads = s.threads or threads
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    if s.optimization is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[s.optimization])
    available = ort.get_available_providers()
    if s.provider is None:
        return options, choose_providers(available), threads
    if s.provider not in available:
        raise NotApplicable(f"this onnxruntime build has no {s.provider} (it has {', '.join(available)})")
    return options, list(dict.fromkeys([s.provider, CPU_PROVIDER])), threads


def coverage_of_profile(events: list[dict]) -> Coverage:
    """Nodes per execution provider from ONNX Runtime's profile of a run (its "Node" events carry
    the provider that ran each node of the optimised graph), and the share of kernel time (the
    "..._kernel_time" events' durations) spent off the plain CPU kernels."""
    by_node: dict[str, str] = {}
    time_by: dict[str, float] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and "provider" in args:
            by_node[str(args.get("node_index", e.get("name")))] = args["provider"]
            if str(e.get("name", "")).endswith("_kernel_time"):
                time_by[args["provider"]] = time_by.get(args["provider"], 0.0) + float(e.get("dur") or 0)
    by: dict[str, int] = {}
    for provider in by_node.values():
        by[provider] = by.get(provider, 0) + 1
    nodes = len(by_node)
    accelerated = sum(n for p, n in by.items() if p != CPU_PROVIDER)
    total = sum(time_by.values())
    time_share = sum(t for p, t in time_by.items() if p != CPU_PROVIDER) / total if total > 0 else None
    return Coverage(nodes=nodes, by=by, accelerated=accelerated / nodes if nodes else 0.0,
                    time_share=time_share, source="onnxruntime profile")


class OrtSession(Session):
    def __init__(self, session, threads: int):
        self._session = session
        self._threads = threads
        self.inputs = [_spec(n) for n in session.get_inputs()]
        self.outputs = [_spec(n) for n in session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feed)

    def describe(self) -> dict:
        return {"providers": self._session.get_providers(), "threads": self._threads}


@lru_cache(maxsize=1)
def _installed_version() -> str | None:
    """Read the version from package metadata, so listing runtimes does not import ORT (~40 MB).

    Several distributions ship the `onnxruntime` module (onnxruntime-gpu, -openvino, ...).
    """
    if "onnxruntime" in sys.modules:
        return str(sys.modules["onnxruntime"].__version__)
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    for dist in importlib.metadata.packages_distributions().get("onnxruntime", []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return str(_import_ort().__version__)  # module present without metadata (e.g. vendored)


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = (ONNX,)

    def available(self) -> bool:
        try:
            return _installed_version() is not None
        except (RuntimeUnavailable, ImportError, ValueError):
            return False

    def version(self) -> str:
        version = _installed_version()
        if version is None:
            raise RuntimeUnavailable("onnxruntime is not installed")
        return version

    def prepare(self) -> None:
        _import_ort()

    def load(self, path: Path, threads: int = 0, settings: RuntimeSettings | None = None) -> Session:
        ort = _import_ort()
        options, providers, threads = _options(ort, threads, settings)
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        return OrtSession(session, threads)

    def coverage(self, path: Path, settings: RuntimeSettings | None, feed: dict[str, np.ndarray]) -> Coverage | None:
        """One profiled run in a session of its own (profiling would slow the timed runs)."""
        import json
        import tempfile

        ort = _import_ort()
        options, providers, _ = _options(ort, 0, settings)
        with tempfile.TemporaryDirectory(prefix="edgehub-ort-profile-") as tmp:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "run")
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            session.run(None, feed)
            with open(session.end_profiling()) as handle:
                return coverage_of_profile(json.load(handle))
