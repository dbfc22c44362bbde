"""TensorRT: builds an engine on the device from a TensorRT-ready ONNX variant, caches it, runs it.

The hub's `tensorrt_ready` pass writes the engine-build settings into the ONNX file's metadata
(key "edgehub.tensorrt") and the manifest's recipe. Here they are read back without the onnx
package, the engine is built once (the only module that imports TensorRT is tensorrt_engine)
and cached under a key of the variant's sha256, the TensorRT version, the GPU and the settings,
so a new TensorRT, another GPU or other settings never reuse a stale engine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from edgehub.agent.runtimes.base import Runtime, RuntimeUnavailable, Session, only_threads
from edgehub.protocol.formats import TENSORRT
from edgehub.protocol.runtime_settings import RuntimeSettings
from edgehub.protocol.tensorrt_settings import METADATA_KEY, EngineSettings

CACHE_ENV = "EDGEHUB_TENSORRT_CACHE"
CACHE_DIR_NAME = "tensorrt-engines"
_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-cu12-bindings",
                  "tensorrt-cu13-bindings", "tensorrt-cu11-bindings")


# ---- reading the settings without the onnx package ---------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message's top level."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, wire, value


def onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    """ModelProto.metadata_props (field 14: StringStringEntryProto key=1, value=2)."""
    props: dict[str, str] = {}
    for number, wire, value in _fields(model_bytes):
        if number == 14 and wire == 2:
            entry = {n: v for n, w, v in _fields(value) if w == 2}
            props[entry.get(1, b"").decode(errors="replace")] = entry.get(2, b"").decode(errors="replace")
    return props


def engine_settings(model_bytes: bytes) -> EngineSettings:
    """The settings the hub wrote into the model; defaults for a plain ONNX file."""
    try:
        raw = onnx_metadata(model_bytes).get(METADATA_KEY)
    except ValueError as exc:
        raise ValueError(f"not a readable ONNX file ({exc})") from None
    if raw is None:
        return EngineSettings()
    try:
        return EngineSettings.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"bad {METADATA_KEY} settings in the model: {exc.errors()[0]['msg']}") from None


# ---- the engine cache ---------------------------------------------------------------------------

def engine_cache_key(model_sha256: str, tensorrt_version: str, gpu: str, settings: EngineSettings) -> str:
    """An engine is only valid for the same model, TensorRT version, GPU and build settings."""
    payload = json.dumps({"model": model_sha256, "tensorrt": tensorrt_version, "gpu": gpu,
                          "settings": settings.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class EngineCache:
    """Serialized engines on disk, `<key>.engine` plus `<key>.json` (what was built and how long it took)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def get(self, key: str) -> tuple[bytes, dict] | None:
        engine, info = self.directory / f"{key}.engine", self.directory / f"{key}.json"
        if not engine.is_file() or not info.is_file():
            return None
        try:
            return engine.read_bytes(), json.loads(info.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is rebuilt

    def put(self, key: str, engine: bytes, info: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(engine)
        os.replace(tmp, self.directory / f"{key}.engine")  # atomic: readers never see half an engine
        (self.directory / f"{key}.json").write_text(json.dumps(info, sort_keys=True))


def cache_dir_for(model_path: Path) -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(model_path).parent / CACHE_DIR_NAME


# ---- the runtime ---------------------------------------------------------------------------------

def _installed_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    for dist in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    # JetPack installs the module from apt, without Python package metadata.
    return str(_import_engine_module().tensorrt_version())


def _import_engine_module():
    try:
        from edgehub.agent.runtimes import tensorrt_engine
    except ImportError as exc:
        raise RuntimeUnavailable(f"TensorRT is not installed ({exc}); on Jetson it comes with JetPack, "
                                 "elsewhere with pip install tensorrt") from None
    return tensorrt_engine


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    formats = (TENSORRT,)
    # CUDA reserves far more virtual address space than it uses: an RLIMIT_AS memory limit
    # would fail CUDA's initialisation, so the benchmark child does not set one for this runtime.
    limits_address_space = False

    def available(self) -> bool:
        try:
            return importlib.util.find_spec("tensorrt") is not None
        except (ImportError, ValueError):
            return False

    def version(self) -> str:
        if not self.available():
            raise RuntimeUnavailable("TensorRT is not installed (the tensorrt Python package; "
                                     "on Jetson it comes with JetPack)")
        version = _installed_version()
        if version is None:
            raise RuntimeUnavailable("TensorRT is not installed")
        return version

    def prepare(self) -> None:
        self.version()
        _import_engine_module()

    def load(self, path: Path, threads: int = 0, settings: RuntimeSettings | None = None) -> Session:
        threads = only_threads(self.name, settings, threads)
        version = self.version()
        engine_module = _import_engine_module()
        model_bytes = Path(path).read_bytes()
        try:
            settings = engine_settings(model_bytes)
        except ValueError as exc:
            raise ValueError(f"{Path(path).name}: {exc}") from None
        gpu = engine_module.gpu_name()
        key = engine_cache_key(hashlib.sha256(model_bytes).hexdigest(), version, gpu, settings)
        cache = EngineCache(cache_dir_for(path))
        cached = cache.get(key)
        if cached is not None:
            engine, info = cached
            build = {"engine_cache": "hit", "build_ms": info.get("build_ms")}
        else:
            t0 = time.perf_counter()
            engine = engine_module.build_serialized_engine(model_bytes, settings)
            build_ms = (time.perf_counter() - t0) * 1000
            cache.put(key, engine, {"build_ms": build_ms, "tensorrt": version, "gpu": gpu,
                                    "settings": settings.model_dump(mode="json"), "model": Path(path).name})
            build = {"engine_cache": "miss", "build_ms": build_ms}
            print(f"tensorrt: built the engine in {build_ms:.0f} ms on {gpu}", file=sys.stderr)
        return engine_module.TensorRTSession(engine, settings, threads,
                                             {**build, "cache_key": key, "gpu": gpu, "tensorrt": version})
