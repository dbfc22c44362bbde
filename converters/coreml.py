"""Core ML packages as single artifacts, and what they hold.

An .mlpackage is a directory; the hub stores it as ONE zip written deterministically (sorted
entries, fixed timestamps and permissions, the package's Manifest.json identifiers derived from
the item paths instead of random UUIDs), so the same model gives the same sha256 every time.

Core ML predicts only on macOS, so on the hub a package is validated from its spec: its inputs,
outputs, and the precision each weight is stored in (fp16, int8, or an n-bit palette).
"""

from __future__ import annotations

import json
import math
import uuid
import zipfile
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from edgehub.converters.errors import ConversionError
from edgehub.protocol.coreml_package import PACKAGE_NAME, extract_mlpackage
from edgehub.protocol.manifest import TensorSpec

__all__ = ["CoreMLSummary", "WeightInfo", "extract_mlpackage", "inspect_mlpackage", "zip_mlpackage"]

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_ID_NAMESPACE = uuid.UUID("6f1c7d1e-9a52-4c4e-8d43-2b8f0e5a1c17")
WEIGHT_OPS = ("conv", "conv_transpose", "linear", "matmul", "gather", "embedding")
# Core ML feature types (ArrayFeatureType.ArrayDataType) -> numpy dtype names
_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32", 131080: "int8"}


def _stable_manifest(package: Path) -> None:
    """Replace the random item identifiers in Manifest.json by ones derived from the item paths."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(_ID_NAMESPACE, entry["path"])) for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def zip_mlpackage(package: Path, out: Path) -> Path:
    """Zip an .mlpackage directory deterministically as `model.mlpackage/...` entries."""
    package = Path(package)
    if not (package / "Manifest.json").is_file():
        raise ConversionError(f"{package}: not an .mlpackage (no Manifest.json)")
    _stable_manifest(package)
    files = sorted(p for p in package.rglob("*") if p.is_file())
    with zipfile.ZipFile(out, "w") as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{PACKAGE_NAME}/{path.relative_to(package).as_posix()}", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return out


class WeightInfo(BaseModel):
    op: str  # the MIL operation using the weight ("conv", "linear", ...)
    output: str  # that operation's output name
    storage: str  # "fp32", "fp16", "int8", "uint8", "int4", "palette-4bit", ...
    elements: int


class CoreMLSummary(BaseModel):
    model_type: str  # "mlProgram" (or "neuralNetwork" for older packages)
    specification_version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weights: list[WeightInfo]

    def storage_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(w.storage for w in self.weights).items()))

    def compressed_fraction(self) -> float:
        """Share of weight elements stored in fewer than 16 bits."""
        total = sum(w.elements for w in self.weights)
        small = sum(w.elements for w in self.weights if w.storage not in ("fp32", "fp16"))
        return round(small / total, 4) if total else 0.0


def _feature_spec(feature) -> TensorSpec:
    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return TensorSpec(name=feature.name, dtype=kind or "unknown", shape=[])
    array = feature.type.multiArrayType
    dtype = _ARRAY_DTYPES.get(array.dataType, f"type{array.dataType}")
    return TensorSpec(name=feature.name, dtype=dtype, shape=[int(d) for d in array.shape])


def _dims(value_type) -> list[int]:
    return [int(d.constant.size) for d in value_type.tensorType.dimensions]


def _storage(producer, mil_types) -> str:
    """How a weight is stored, from the operation that produces it."""
    name = mil_types.DataType.Name
    if producer.type == "const":
        return {"FLOAT16": "fp16", "FLOAT32": "fp32"}.get(name(producer.outputs[0].type.tensorType.dataType), "other")
    attrs = dict(producer.attributes)
    if producer.type == "constexpr_lut_to_dense":
        dims = _dims(attrs["lut"].type) if "lut" in attrs else []
        if not dims:
            return "palette"
        size = dims[0] if len(dims) == 1 else dims[-2]
        return f"palette-{int(math.log2(size))}bit" if size > 0 else "palette"
    for key in ("quantized_data", "data"):
        if key in attrs and producer.type in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"):
            return name(attrs[key].type.tensorType.dataType).lower()
    return producer.type


def inspect_mlpackage(path: Path) -> CoreMLSummary:
    """Read a package (directory or edgehub zip) and describe its I/O and weight storage."""
    import tempfile

    import coremltools as ct
    from coremltools.proto import MIL_pb2

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        package = extract_mlpackage(path, Path(tmp)) if path.is_file() else path
        try:
            spec = ct.utils.load_spec(str(package))
        except Exception as exc:  # protobuf and file errors of every kind
            raise ConversionError(f"{path.name}: not a readable Core ML package ({type(exc).__name__})") from None
    weights: list[WeightInfo] = []
    model_type = spec.WhichOneof("Type") or "unknown"
    if model_type == "mlProgram":
        for function in spec.mlProgram.functions.values():
            block = function.block_specializations[function.opset]
            producers = {out.name: op for op in block.operations for out in op.outputs}
            for op in block.operations:
                if op.type not in WEIGHT_OPS:
                    continue
                for key in ("weight", "y", "x"):
                    args = op.inputs[key].arguments if key in op.inputs else []
                    producer = producers.get(args[0].name) if args and args[0].name else None
                    # Only constants are weights; a matmul of two activations has none.
                    if producer is not None and (producer.type == "const" or producer.type.startswith("constexpr")):
                        elements = math.prod(_dims(producer.outputs[0].type))
                        weights.append(WeightInfo(op=op.type, output=op.outputs[0].name,
                                                  storage=_storage(producer, MIL_pb2), elements=elements))
                        break
    return CoreMLSummary(
        model_type=model_type, specification_version=int(spec.specificationVersion),
        inputs=[_feature_spec(f) for f in spec.description.input],
        outputs=[_feature_spec(f) for f in spec.description.output],
        weights=weights,
    )
