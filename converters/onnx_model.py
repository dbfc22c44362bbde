"""Reading ONNX files: validation with clear errors, and their input/output specs."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from edgehub.converters.artifact import Artifact, TensorSpec
from edgehub.converters.errors import ConversionError
from edgehub.protocol.formats import ONNX

# A model that claims a dimension larger than this is treated as hostile or broken.
MAX_DIM = 1 << 24


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        raise ConversionError(f"input/output {value_info.name!r} is not a tensor; only tensors are supported")
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape: list[int | str] = []
    for i, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            if not 0 <= dim.dim_value <= MAX_DIM:
                raise ConversionError(f"{value_info.name!r} has an absurd dimension {dim.dim_value}")
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or f"dim{i}")
    return TensorSpec(name=value_info.name, dtype=dtype, shape=shape)


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, raising ConversionError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for bad bytes
        raise ConversionError(f"{path.name}: not a readable ONNX model ({type(exc).__name__}); "
                              "give an .onnx file or a PyTorch factory 'pkg.module:factory'") from None
    if not model.graph.node or not model.graph.output:
        raise ConversionError(f"{path.name}: not a valid ONNX model (empty graph); "
                              "give an .onnx file or a PyTorch factory 'pkg.module:factory'")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise ConversionError(f"{path.name}: ONNX model fails the checker: {reason}") from None
    return model


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs: graph inputs that are not initializers (old exporters list both)."""
    initializers = {init.name for init in model.graph.initializer}
    return [_spec(vi) for vi in model.graph.input if vi.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(vi) for vi in model.graph.output]


def onnx_artifact(path: Path, precision: str = "fp32", notes: dict | None = None) -> Artifact:
    """Describe an ONNX file as an Artifact (validating it on the way)."""
    model = load_onnx(path)
    return Artifact(
        path=Path(path),
        format=ONNX,
        precision=precision,
        inputs=graph_inputs(model),
        outputs=graph_outputs(model),
        notes=notes or {},
    )
