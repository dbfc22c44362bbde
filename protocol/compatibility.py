"""What a variant needs from the device's runtime, and whether a device has it.

The hub states it in every variant's signed manifest (publish reads it off the file); the hub
sends a device only candidates whose requirements its reported runtimes meet, and the agent
checks again before it downloads. Pure: no runtime is imported here.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

# ONNX Runtime release -> (the newest ai.onnx opset it implements, the newest ONNX IR version it
# reads), from ONNX Runtime's version matrix (docs/reference/compatibility). A release newer than
# the table is not refused: it implements at least the last row.
ORT_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (1, 10): (15, 7), (1, 11): (15, 7), (1, 12): (15, 7), (1, 13): (17, 8), (1, 14): (18, 8),
    (1, 15): (19, 9), (1, 16): (19, 9), (1, 17): (20, 9), (1, 18): (21, 10), (1, 19): (21, 10),
    (1, 20): (21, 10), (1, 21): (22, 10), (1, 22): (22, 11), (1, 23): (23, 11),
}

# TensorRT release -> the newest ai.onnx opset its ONNX parser reads, from onnx-tensorrt's
# operators.md of each release (8.0: 13, 8.5 and 8.6: 17, 9.2: 19, 10.0: 20) and NVIDIA's opset
# guide for 11.x (25). A release between rows is judged by the row below it (conservative); one
# newer than the table is not refused. Explicit Q/DQ int8 (what edgehub's TensorRT-ready int8
# files are) arrived with 8.0, the table's first row: older releases are refused.
TENSORRT_OPSET: dict[tuple[int, int], int] = {(8, 0): 13, (8, 5): 17, (8, 6): 17, (9, 2): 19, (10, 0): 20,
                                              (11, 0): 25}

# LiteRT (ai-edge-litert) releases run the kernels of at least this TensorFlow Lite release; the
# older tflite-runtime wheels are numbered as TensorFlow itself is.
LITERT_TF_FLOOR = "2.18.0"


class Requirements(BaseModel):
    """The runtime a variant needs; None fields: no constraint of that kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtimes: list[str] = Field(default_factory=list, max_length=8)  # any of these loads it
    onnx_ir: int | None = Field(None, ge=1)
    onnx_opset: int | None = Field(None, ge=1)  # the newest ai.onnx opset the graph imports
    tflite_min_runtime: str | None = Field(None, max_length=32)  # the file's min_runtime_version metadata
    edgetpu_min_runtime: int | None = Field(None, ge=1)  # the Edge TPU runtime the compiler targeted (-m)


def version_tuple(text: str) -> tuple[int, ...]:
    """'1.17.3' -> (1, 17, 3); 'v2.14.0rc1' -> (2, 14, 0); unreadable -> ()."""
    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])


OLDER = "older"  # _release_row: the release predates the table


def _release_row(table: dict, version: str):
    """The table's row for a release (the newest row at or below it), OLDER for one before the
    table, None where nothing is judged (unreadable, or newer than the table)."""
    v = version_tuple(version)[:2]
    if len(v) < 2 or v > max(table):
        return None
    known = [k for k in table if k <= v]
    return table[max(known)] if known else OLDER


def _onnx_unmet(req: Requirements, version: str) -> str | None:
    row = _release_row(ORT_SUPPORT, version) if req.onnx_opset is not None else None
    if row is None:
        return None
    if row == OLDER:
        return f"onnxruntime {version} is older than any release edgehub knows (1.10)"
    opset, ir = row
    if req.onnx_opset > opset or (req.onnx_ir or 0) > ir:
        return (f"onnxruntime {version} runs ONNX opset <= {opset} and IR <= {ir}; this variant needs opset "
                f"{req.onnx_opset}, IR {req.onnx_ir}")
    return None


def _tensorrt_unmet(req: Requirements, version: str) -> str | None:
    opset = _release_row(TENSORRT_OPSET, version) if req.onnx_opset is not None else None
    if opset is None:
        return None
    if opset == OLDER:
        return f"TensorRT {version} is older than any release edgehub knows (8.0, the first with Q/DQ int8)"
    if req.onnx_opset > opset:
        return f"TensorRT {version} parses ONNX opset <= {opset}; this variant needs opset {req.onnx_opset}"
    return None


def edgetpu_runtime_version(version: str) -> int | None:
    """The runtime number in libedgetpu's version string ('BuildLabel(...), RuntimeVersion(14)')."""
    match = re.search(r"RuntimeVersion\((\d+)\)", version)
    return int(match.group(1)) if match else None


def _edgetpu_unmet(req: Requirements, version: str) -> str | None:
    have = edgetpu_runtime_version(version)
    if req.edgetpu_min_runtime is None or have is None or have >= req.edgetpu_min_runtime:
        return None
    return (f"the Edge TPU runtime is version {have}; this variant was compiled for runtime "
            f">= {req.edgetpu_min_runtime}")


def _tflite_unmet(req: Requirements, runtime: str, version: str) -> str | None:
    if not req.tflite_min_runtime:
        return None
    need = version_tuple(req.tflite_min_runtime)
    have = version_tuple(LITERT_TF_FLOOR if runtime == "litert" else version)
    if need and have and have < need:
        return f"{runtime} {version} is older than the TFLite runtime {req.tflite_min_runtime} this variant needs"
    return None


def unmet(req: Requirements | None, runtimes: dict[str, str]) -> str | None:
    """Why a device with these runtimes (name -> version) cannot load the variant, or None.

    Only versions are judged: a device that reports none of the variant's runtimes (or a
    simulated one) is left to the profile, as before. Of several runtimes that load the format,
    one that can is enough.
    """
    if req is None:
        return None
    present = [(name, runtimes[name]) for name in req.runtimes if name in runtimes]
    reasons = []
    for name, version in present:
        if name == "onnxruntime":
            why = _onnx_unmet(req, version)
        elif name in ("litert", "tflite-runtime"):
            why = _tflite_unmet(req, name, version)
        elif name == "tensorrt":
            why = _tensorrt_unmet(req, version)
        elif name == "edgetpu":
            why = _edgetpu_unmet(req, version)
        else:  # Core ML: no version table here (the OS decides what an mlprogram needs); the device's load decides
            why = None
        if why is None:
            return None
        reasons.append(why)
    return "; ".join(reasons) or None
