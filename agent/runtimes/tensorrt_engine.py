"""The one module that imports TensorRT: engine build and execution with its documented Python API.

Build (TensorRT 8.5-10.x): Builder -> network -> OnnxParser.parse -> BuilderConfig (memory pool,
precision flags, optimization profile, DLA) -> build_serialized_network. Run: Runtime ->
deserialize_cuda_engine -> execution context, with the I/O-tensor API (set_input_shape,
set_tensor_address, execute_async_v3). Device memory and copies go through the CUDA runtime
library with ctypes, so the agent needs no PyTorch, CuPy or cuda-python.
"""

from __future__ import annotations

import ctypes

import numpy as np
import tensorrt as trt

from edgehub.agent.runtimes.base import Session
from edgehub.protocol.manifest import TensorSpec
from edgehub.protocol.tensorrt_settings import EngineSettings

_CUDART_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2")
_H2D, _D2H = 1, 2  # cudaMemcpyKind
_LOGGER = trt.Logger(trt.Logger.WARNING)


def tensorrt_version() -> str:
    return trt.__version__


class _Cuda:
    """The few CUDA runtime calls needed: malloc/free, async copies on a stream, device name."""

    def __init__(self) -> None:
        for name in _CUDART_NAMES:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise RuntimeError("the CUDA runtime library (libcudart) is not installed")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed: {self.lib.cudaGetErrorString(status).decode()}")

    def malloc(self, size: int) -> ctypes.c_void_p:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(size, 1))), "cudaMalloc")
        return ptr

    def free(self, ptr: ctypes.c_void_p) -> None:
        self.lib.cudaFree(ptr)

    def stream(self) -> ctypes.c_void_p:
        stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream

    def copy(self, dst, src, size: int, kind: int, stream) -> None:
        self.check(self.lib.cudaMemcpyAsync(dst, src, ctypes.c_size_t(size), kind, stream), "cudaMemcpyAsync")

    def sync(self, stream) -> None:
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def device_name(self) -> str:
        props = ctypes.create_string_buffer(4096)  # cudaDeviceProp starts with char name[256]
        for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            fn = getattr(self.lib, symbol, None)
            if fn is not None:
                self.check(fn(props, 0), symbol)
                return props.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
        raise RuntimeError("cudaGetDeviceProperties is missing from libcudart")


_CUDA: _Cuda | None = None


def _cuda() -> _Cuda:
    global _CUDA
    if _CUDA is None:
        _CUDA = _Cuda()
    return _CUDA


def gpu_name() -> str:
    return _cuda().device_name()


def build_serialized_engine(model_bytes: bytes, settings: EngineSettings) -> bytes:
    """Parse the ONNX model and build a serialized engine; RuntimeError with the parser's errors."""
    builder = trt.Builder(_LOGGER)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = settings.builder_optimization_level
    for flag in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    if settings.profiles:
        profile = builder.create_optimization_profile()
        for name, shapes in settings.profiles.items():
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build an engine (see the builder's log above)")
    return bytes(serialized)


class TensorRTSession(Session):
    def __init__(self, engine_bytes: bytes, settings: EngineSettings, threads: int, build: dict):
        self._cuda = _cuda()
        self._runtime = trt.Runtime(_LOGGER)
        self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise RuntimeError("TensorRT could not load the cached engine")
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.stream()
        self._settings, self._threads, self._build = settings, threads, build
        self._buffers: dict[str, tuple[ctypes.c_void_p, int]] = {}
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}

        def spec(n: str) -> TensorSpec:
            shape = [d if d >= 0 else ("batch" if i == 0 else f"dim{i}")
                     for i, d in enumerate(self._engine.get_tensor_shape(n))]
            return TensorSpec(name=n, dtype=self._dtypes[n].name, shape=shape)

        self.inputs = [spec(n) for n in names if is_input[n]]
        self.outputs = [spec(n) for n in names if not is_input[n]]

    def _buffer(self, name: str, size: int) -> ctypes.c_void_p:
        ptr, capacity = self._buffers.get(name, (None, 0))
        if ptr is None or capacity < size:
            if ptr is not None:
                self._cuda.free(ptr)
            ptr = self._cuda.malloc(size)
            self._buffers[name] = (ptr, size)
            self._context.set_tensor_address(name, ptr.value)
        return ptr

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        for spec in self.inputs:
            array = np.ascontiguousarray(feed[spec.name], dtype=self._dtypes[spec.name])
            self._context.set_input_shape(spec.name, array.shape)
            ptr = self._buffer(spec.name, array.nbytes)
            self._cuda.copy(ptr, array.ctypes.data_as(ctypes.c_void_p), array.nbytes, _H2D, self._stream)
        results = []
        for spec in self.outputs:
            out = np.empty(tuple(self._context.get_tensor_shape(spec.name)), dtype=self._dtypes[spec.name])
            self._buffer(spec.name, out.nbytes)
            results.append(out)
        if not self._context.execute_async_v3(self._stream.value):
            raise RuntimeError("TensorRT execution failed")
        for spec, out in zip(self.outputs, results):
            ptr, _ = self._buffers[spec.name]
            self._cuda.copy(out.ctypes.data_as(ctypes.c_void_p), ptr, out.nbytes, _D2H, self._stream)
        self._cuda.sync(self._stream)
        return results

    def describe(self) -> dict:
        return {"providers": ["TensorRT" + (f" (DLA {self._settings.dla_core})" if self._settings.dla_core is not None
                                            else "")],
                "threads": self._threads, "precision": self._settings.precision, **self._build}

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cuda.free(ptr)
