"""Read a variant file's runtime requirements (protocol/compatibility.py) off the file itself:
the ONNX IR version and the newest ai.onnx opset it imports; a TFLite file's min_runtime_version
metadata, which the TFLite converter writes from the op versions the graph uses."""

from __future__ import annotations

from pathlib import Path

from edgehub.protocol.compatibility import Requirements
from edgehub.protocol.formats import FORMATS


def _onnx(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return {"onnx_ir": int(model.ir_version), "onnx_opset": max(opsets) if opsets else None}


def _tflite(path: Path) -> dict:
    from ai_edge_litert import schema_py_generated as schema

    buffer = path.read_bytes()
    model = schema.Model.GetRootAsModel(buffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"min_runtime_version":
            data = model.Buffers(entry.Buffer()).DataAsNumpy()  # 0, not an array, when empty
            text = bytes(data).split(b"\0")[0].decode("ascii", "replace").strip() if hasattr(data, "tobytes") else ""
            return {"tflite_min_runtime": text or None}
    return {}


def requirements_of(path: Path, format: str, notes: dict | None = None) -> Requirements:
    """What a device's runtime must offer to load this file (the device's load and reference
    check remain the last word). `notes`: the pass's notes (an Edge TPU file's target runtime)."""
    known = FORMATS.get(format)
    fields: dict = {"runtimes": list(known.runtimes) if known else []}
    if format in ("onnx", "tensorrt"):
        fields.update(_onnx(path))
    elif format == "tflite":
        fields.update(_tflite(path))
    elif format == "edgetpu" and (notes or {}).get("min_runtime_version"):
        # The runtime the compiler was told to target (-m); without it the compiler's own default
        # applies, which edgehub does not guess: the device's load decides.
        fields["edgetpu_min_runtime"] = int(notes["min_runtime_version"])
    return Requirements(**fields)
