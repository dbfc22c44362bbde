"""Variant formats: the one place their names are defined, with the file suffix a device stores a
variant under and the device runtimes that load it. Converters declare which of these a pass
takes and makes; the hub plans chains with them; the agent picks a runtime by them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FormatName = Literal["onnx", "tflite", "edgetpu", "coreml", "tensorrt"]

ONNX: FormatName = "onnx"
TFLITE: FormatName = "tflite"
EDGETPU: FormatName = "edgetpu"  # a TFLite file compiled for the Edge TPU (or ready for the compiler)
COREML: FormatName = "coreml"  # a zip holding one .mlpackage (protocol/coreml_package.py)
TENSORRT: FormatName = "tensorrt"  # TensorRT-ready ONNX; the device builds the engine


@dataclass(frozen=True)
class VariantFormat:
    name: FormatName
    suffix: str  # how a device names the downloaded file
    runtimes: tuple[str, ...]  # device runtimes (agent/runtimes) that load it, preferred first


FORMATS: dict[str, VariantFormat] = {f.name: f for f in (
    VariantFormat(ONNX, ".onnx", ("onnxruntime",)),
    VariantFormat(TFLITE, ".tflite", ("litert", "tflite-runtime")),
    VariantFormat(EDGETPU, ".tflite", ("edgetpu",)),
    VariantFormat(COREML, ".mlpackage.zip", ("coreml",)),
    VariantFormat(TENSORRT, ".onnx", ("tensorrt",)),
)}


def suffix_of(name: str) -> str:
    """The file suffix for a format name; an unknown one gets none (the file is still verified)."""
    known = FORMATS.get(name)
    return known.suffix if known else ""
