"""LiteRT (ai-edge-litert, XNNPACK on the CPU) for .tflite variants, with tflite-runtime as a fallback.

Quantized inputs and outputs (full-int8 models) are presented as float32: floats fed in are
quantized with the tensor's scale and zero point, outputs are dequantized, so reference checks
and applications work the same for every variant (an already-integer array is passed through).

tflite-runtime 2.14 (numpy < 2) is only a fallback: it has no XNNPACK int8 path, cannot load
some litert-torch files and computes some dynamic-range models wrongly; the benchmark's check
against the reference outputs is what flags such a variant on the device (low agreement).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np

from edgehub.agent.runtimes.base import NotApplicable, Runtime, RuntimeUnavailable, Session, check_threads
from edgehub.protocol.formats import TFLITE
from edgehub.protocol.manifest import TensorSpec
from edgehub.protocol.runtime_settings import Coverage, RuntimeSettings

LITERT_MODULE = "ai_edge_litert.interpreter"
FALLBACK_MODULE = "tflite_runtime.interpreter"


@lru_cache(maxsize=4)
def package_version(distribution: str, module: str) -> str | None:
    """Version from package metadata, so listing runtimes does not import the interpreter."""
    try:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_interpreter(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(f"{module.split('.')[0]} is not installed ({exc})") from None


def _quantization(detail: dict) -> tuple[float, int] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale and np.dtype(detail["dtype"]).kind in "iu":
        return float(scale), int(zero_point)
    return None


def _shape(detail: dict) -> list[int | str]:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return [int(d) if d >= 0 else ("batch" if i == 0 else f"dim{i}") for i, d in enumerate(dims)]


class TfliteSession(Session):
    """One interpreter; tensors addressed by index, names from the serving signature if there is one."""

    def __init__(self, interpreter, threads: int, delegates: list[str]):
        self._interpreter = interpreter
        self._threads = threads
        self._delegates = delegates
        interpreter.allocate_tensors()
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        in_names, out_names = self._signature_names()
        self._quant_in = [_quantization(d) for d in self._in]
        self._quant_out = [_quantization(d) for d in self._out]
        self.inputs = [TensorSpec(name=n, dtype="float32" if q else np.dtype(d["dtype"]).name, shape=_shape(d))
                       for n, d, q in zip(in_names, self._in, self._quant_in)]
        self.outputs = [TensorSpec(name=n, dtype="float32" if q else np.dtype(d["dtype"]).name, shape=_shape(d))
                        for n, d, q in zip(out_names, self._out, self._quant_out)]

    def _signature_names(self) -> tuple[list[str], list[str]]:
        names_in = [d["name"] for d in self._in]
        names_out = [d["name"] for d in self._out]
        get_list = getattr(self._interpreter, "get_signature_list", None)
        signatures = get_list() if get_list else {}
        if len(signatures) == 1:
            runner = self._interpreter.get_signature_runner(next(iter(signatures)))
            by_in = {d["index"]: n for n, d in runner.get_input_details().items()}
            by_out = {d["index"]: n for n, d in runner.get_output_details().items()}
            names_in = [by_in.get(d["index"], d["name"]) for d in self._in]
            names_out = [by_out.get(d["index"], d["name"]) for d in self._out]
        return names_in, names_out

    def _to_tensor(self, array: np.ndarray, detail: dict, quant: tuple[float, int] | None) -> np.ndarray:
        if quant is not None and array.dtype.kind == "f":
            scale, zero_point = quant
            info = np.iinfo(detail["dtype"])
            array = np.clip(np.round(array / np.float32(scale)) + zero_point, info.min, info.max)
        return np.ascontiguousarray(array, dtype=detail["dtype"])

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter
        arrays = [self._to_tensor(np.asarray(feed[spec.name]), detail, quant)
                  for spec, detail, quant in zip(self.inputs, self._in, self._quant_in)]
        if any(tuple(a.shape) != tuple(d["shape"]) for a, d in zip(arrays, self._in)):
            for array, detail in zip(arrays, self._in):  # a new batch size: re-plan, then feed
                interpreter.resize_tensor_input(detail["index"], array.shape)
            interpreter.allocate_tensors()
            self._in, self._out = interpreter.get_input_details(), interpreter.get_output_details()
        for array, detail in zip(arrays, self._in):
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
        outputs = []
        for detail, quant in zip(self._out, self._quant_out):
            out = interpreter.get_tensor(detail["index"])
            if quant is not None:
                scale, zero_point = quant
                out = (out.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
            outputs.append(np.array(out, copy=True))
        return outputs

    def describe(self) -> dict:
        return {"providers": self._delegates, "threads": self._threads}


def _delegates_applied(interpreter) -> bool:
    """Whether a delegate (XNNPACK by default) took over part of the graph."""
    ops = getattr(interpreter, "_get_ops_details", None)
    try:
        return any(op.get("op_name") == "DELEGATE" for op in ops()) if ops else False
    except (RuntimeError, ValueError):
        return False


def coverage_of_interpreter(graph) -> Coverage:
    """Which nodes a delegate took, from the interpreter's own graph: each DELEGATE node stands for
    the partition between its input and output tensors, found by walking back from its outputs
    through the original nodes that produce them."""
    names = [graph.NodeName(n) for n in range(graph.NumNodes())]
    delegates = [n for n, name in enumerate(names) if name == "DELEGATE"]
    originals = [n for n, name in enumerate(names) if name != "DELEGATE"]
    producer = {int(t): n for n in originals for t in graph.NodeOutputs(n)}
    delegated: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in graph.NodeInputs(d)}
        stack = [int(t) for t in graph.NodeOutputs(d)]
        while stack:
            tensor = stack.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in delegated:
                continue
            delegated.add(node)
            stack.extend(int(t) for t in graph.NodeInputs(node))
    nodes = len(originals)
    by = {k: v for k, v in (("XNNPACK", len(delegated)), ("builtin", nodes - len(delegated))) if v}
    return Coverage(nodes=nodes, by=by, accelerated=len(delegated) / nodes if nodes else 0.0,
                    source="litert delegate partition")


class LiteRT(Runtime):
    """ai-edge-litert's interpreter; XNNPACK is applied by default for fp32 and int8."""

    name = "litert"
    formats = (TFLITE,)
    distribution, module = "ai-edge-litert", LITERT_MODULE

    def available(self) -> bool:
        return package_version(self.distribution, self.module) is not None

    def version(self) -> str:
        version = package_version(self.distribution, self.module)
        if version is None:
            raise RuntimeUnavailable(f"{self.distribution} is not installed")
        return version

    def prepare(self) -> None:
        import_interpreter(self.module)

    def _interpreter(self, path: Path, threads: int, settings: RuntimeSettings | None):
        s = settings or RuntimeSettings()
        if s.provider is not None or s.optimization is not None:
            raise NotApplicable("ONNX Runtime's provider and graph optimisation settings do not apply to LiteRT")
        check_threads(s, os.cpu_count() or 1)
        threads = s.threads or threads
        module = import_interpreter(self.module)
        options = {}
        if s.delegate == "none":  # builtin kernels only: no XNNPACK
            options["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return module.Interpreter(model_path=str(path), num_threads=threads or None, **options), threads

    def load(self, path: Path, threads: int = 0, settings: RuntimeSettings | None = None) -> Session:
        interpreter, threads = self._interpreter(path, threads, settings)
        session = TfliteSession(interpreter, threads, [])
        session._delegates = ["XNNPACK"] if _delegates_applied(interpreter) else ["builtin CPU kernels"]
        return session

    def coverage(self, path: Path, settings: RuntimeSettings | None, feed: dict[str, np.ndarray]) -> Coverage | None:
        interpreter, _ = self._interpreter(path, 1, settings)
        interpreter.allocate_tensors()
        graph = getattr(interpreter, "_interpreter", None)
        return coverage_of_interpreter(graph) if graph is not None and hasattr(graph, "NodeName") else None


class TfliteRuntimeFallback(LiteRT):
    """tflite-runtime 2.14 (older boards; needs numpy < 2). Used only where ai-edge-litert is absent."""

    name = "tflite-runtime"
    distribution, module = "tflite-runtime", FALLBACK_MODULE
