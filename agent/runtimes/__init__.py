"""Registry of the inference runtimes the agent can benchmark and serve with.

Importing this package imports no inference library: each runtime imports its own lazily.
"""

from __future__ import annotations

from edgehub.agent.runtimes.base import Runtime, RuntimeUnavailable, Session
from edgehub.agent.runtimes.coreml_rt import CoreMLRuntime
from edgehub.agent.runtimes.edgetpu_rt import EdgeTpuRuntime
from edgehub.agent.runtimes.litert_rt import LiteRT, TfliteRuntimeFallback
from edgehub.agent.runtimes.onnxruntime_rt import OnnxRuntime
from edgehub.agent.runtimes.tensorrt_rt import TensorRTRuntime

__all__ = ["RUNTIMES", "Runtime", "RuntimeUnavailable", "Session", "available_runtimes", "runtime_for"]

# name -> runtime, in order of preference when several run the same format (ai-edge-litert
# before the older tflite-runtime). Constructing them imports no inference library.
RUNTIMES: dict[str, Runtime] = {
    rt.name: rt
    for rt in (OnnxRuntime(), TensorRTRuntime(), LiteRT(), TfliteRuntimeFallback(), EdgeTpuRuntime(),
               CoreMLRuntime())
}


def available_runtimes() -> dict[str, str]:
    """name -> version of the runtimes installed on this device (for the device state)."""
    found: dict[str, str] = {}
    for name, rt in RUNTIMES.items():
        if not rt.available():
            continue
        try:
            found[name] = rt.version()
        except RuntimeUnavailable:
            continue  # installed but unreadable: treated as absent rather than crashing the agent
    return found


def runtime_for(format: str) -> Runtime:
    """The preferred installed runtime for a model format ("onnx", "tflite", ...)."""
    wanted = format.lower()
    for rt in RUNTIMES.values():
        if wanted in rt.formats and rt.available():
            return rt
    have = [f"{name} ({', '.join(rt.formats)})" for name, rt in RUNTIMES.items() if rt.available()]
    raise RuntimeUnavailable(
        f"no runtime on this device runs {format} models (have: {', '.join(have) or 'none'})"
    )
