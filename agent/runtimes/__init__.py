"""Registry of the inference runtimes the agent can benchmark and serve with.

Importing this package imports no inference library: each runtime imports its own lazily.
"""

from __future__ import annotations

from edgehub.agent.runtimes.base import Runtime, RuntimeUnavailable, Session
from edgehub.agent.runtimes.onnxruntime_rt import OnnxRuntime

__all__ = ["RUNTIMES", "Runtime", "RuntimeUnavailable", "Session", "available_runtimes", "runtime_for"]

# name -> runtime, in order of preference when several run the same format.
RUNTIMES: dict[str, Runtime] = {
    rt.name: rt
    for rt in (OnnxRuntime(),)
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
