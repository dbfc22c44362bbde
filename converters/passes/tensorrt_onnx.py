"""TensorRT-ready ONNX (Jetson): checked for what TensorRT's ONNX parser takes, with static shapes
or an optimization profile, and the engine-build settings written into the model's metadata
(read by the device's TensorRT runtime) and the artifact's notes (the manifest's recipe).

TensorRT takes int8 only as explicit quantization: QuantizeLinear/DequantizeLinear pairs with
symmetric int8 scales (zero points 0). QOperator graphs (QLinearConv, ...), uint8 or asymmetric
Q/DQ, and ONNX Runtime's contrib operators (com.microsoft) are refused with what to do instead.
The engine itself is built on the device, for its GPU and TensorRT version.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import Pass, PassConfig, PassContext, register
from edgehub.protocol.formats import ONNX, TENSORRT
from edgehub.protocol.tensorrt_settings import METADATA_KEY, EngineSettings, ProfileShapes

QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                 "QLinearAdd", "QLinearMul", "QGemm", "QLinearAveragePool", "QLinearGlobalAveragePool",
                 "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu"}
DEFAULT_DOMAINS = ("", "ai.onnx")
MIN_QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute)


class TensorrtReadyConfig(PassConfig):
    # auto: the parent's precision. fp16 on an fp32 parent means TensorRT builds in fp16 (the
    # preferred way: the ONNX keeps fp32 weights and the builder picks fp16 kernels).
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    shapes: Literal["static", "profile"] = "static"
    batch: int = Field(1, ge=1)  # the static batch, or the profile's opt batch
    max_batch: int = Field(8, ge=1)  # the profile's max batch
    workspace_mb: int = Field(1024, ge=16)
    builder_optimization_level: int = Field(3, ge=0, le=5)
    dla_core: int | None = Field(None, ge=0)


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)


def check_parser_ops(model) -> None:
    """Refuse operators TensorRT's ONNX parser has no importer for."""
    foreign = sorted({f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in DEFAULT_DOMAINS})
    if foreign:
        raise ConversionError(f"TensorRT cannot parse ONNX Runtime contrib operators ({', '.join(foreign[:6])}); "
                              "build the TensorRT variant from the plain exported graph")
    qop = sorted({n.op_type for n in model.graph.node if n.op_type in QOPERATOR_OPS})
    if qop:
        raise ConversionError(f"int8 in QOperator form ({', '.join(qop)}) is not TensorRT's: TensorRT takes "
                              "explicit QuantizeLinear/DequantizeLinear; use int8_static (QDQ) with scheme "
                              "'s8s8-symmetric'")


def fold_bias_dequantize(model) -> int:
    """Replace DequantizeLinear of int32 constants (ONNX Runtime's quantized biases) by float
    constants: TensorRT takes int8 Q/DQ only and quantizes biases itself."""
    from onnx import numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    folded = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        data = numpy_helper.to_array(init[node.input[0]])
        if data.dtype != np.int32 or node.input[1] not in init:
            continue
        scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(init[node.input[2]]) if len(node.input) > 2 and node.input[2] in init else 0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and data.ndim > 1:
            shape = [1] * data.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        values = ((data.astype(np.float64) - zero) * scale).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    return len(folded)


def check_explicit_quantization(model) -> dict:
    """Q/DQ nodes with signed int8 and zero zero-points; returns counts for the notes."""
    from onnx import numpy_helper

    folded = fold_bias_dequantize(model)
    init = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in model.graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t")}
    q = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not q:
        raise ConversionError("an int8 TensorRT variant needs explicit quantization (QuantizeLinear/"
                              "DequantizeLinear nodes): build it with int8_static, scheme 's8s8-symmetric'")
    per_channel = 0
    for node in q:
        scale = init.get(node.input[1])
        per_channel += int(scale is not None and len(scale.dims) > 0 and scale.dims[0] > 1)
        what = f"{node.op_type} {node.name or node.output[0]!r}"
        if len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear":  # no zero point: the output is uint8
                raise ConversionError(f"{what} quantizes to uint8; TensorRT needs signed int8: "
                                      "quantize with scheme 's8s8-symmetric'")
            source = init.get(node.input[0])
            if source is not None and numpy_helper.to_array(source).dtype != np.int8:
                raise ConversionError(f"{what} dequantizes {numpy_helper.to_array(source).dtype}; TensorRT "
                                      "needs signed int8: quantize with scheme 's8s8-symmetric'")
            continue  # an activation's type is checked at its QuantizeLinear
        tensor = init.get(node.input[2]) or constants.get(node.input[2])
        if tensor is None:
            raise ConversionError(f"{what}: zero point is not a constant")
        zero = numpy_helper.to_array(tensor)
        if zero.dtype != np.int8:
            raise ConversionError(f"{what} is {zero.dtype} Q/DQ; TensorRT needs signed int8: "
                                  "quantize with scheme 's8s8-symmetric'")
        if np.any(zero != 0):
            raise ConversionError(f"{what} is asymmetric (zero point != 0); TensorRT needs "
                                  "symmetric int8: quantize with scheme 's8s8-symmetric'")
    if per_channel and _opset(model) < MIN_QDQ_OPSET:
        raise ConversionError(f"per-channel Q/DQ needs opset {MIN_QDQ_OPSET}+, the model has {_opset(model)}")
    return {"qdq_nodes": len(q), "per_channel_qdq": per_channel, "bias_dequantize_folded": folded}


def fix_shapes(model, config: TensorrtReadyConfig, calibration: dict[str, np.ndarray] | None) -> dict[str, ProfileShapes]:
    """Static: set the batch (and other named dims from the sample data) on inputs and outputs.
    Profile: leave them named and return min/opt/max per dynamic input."""
    profiles: dict[str, ProfileShapes] = {}
    known: dict[str, int] = {}
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        sample = calibration.get(value.name) if calibration else None
        concrete: list[int] = []
        dynamic_axes: list[int] = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                concrete.append(dim.dim_value)
                continue
            dynamic_axes.append(axis)
            if axis == 0:
                concrete.append(config.batch)
            elif sample is not None and sample.ndim == len(dims):
                concrete.append(int(sample.shape[axis]))  # e.g. the sequence length of the eval set
            else:
                raise ConversionError(f"input {value.name!r} has a dynamic dimension {axis} ({dim.dim_param!r}) "
                                      "and no sample data to size it")
            if dim.dim_param:
                known[dim.dim_param] = concrete[-1]
        if not dynamic_axes:
            continue
        if config.shapes == "profile":
            low = [1 if a == 0 else concrete[a] for a in range(len(concrete))]
            high = [config.max_batch if a == 0 else concrete[a] for a in range(len(concrete))]
            profiles[value.name] = ProfileShapes(min=low, opt=concrete, max=high)
        else:
            for axis in dynamic_axes:
                dims[axis].Clear()
                dims[axis].dim_value = concrete[axis]
    if config.shapes == "static":
        for value in model.graph.output:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in known:
                    name = dim.dim_param
                    dim.Clear()
                    dim.dim_value = known[name]
        del model.graph.value_info[:]  # stale symbolic shapes; re-inferred below
    return profiles


@register
class TensorrtReady(Pass[TensorrtReadyConfig]):
    """Prepare an ONNX variant for a TensorRT engine build on the device."""

    name = "tensorrt_ready"
    output_format = TENSORRT
    config_model = TensorrtReadyConfig
    input_formats = (ONNX,)

    def run(self, artifact: Artifact, config: TensorrtReadyConfig, ctx: PassContext) -> Artifact:
        import json

        import onnx

        from edgehub.converters.onnx_model import graph_inputs, graph_outputs, load_onnx

        precision = artifact.precision if config.precision == "auto" else config.precision
        # A guarded int8 graph (some layers kept float) is explicit quantization all the same: TensorRT
        # runs its Q/DQ layers in int8 and the rest in float.
        mixed = precision == "mixed"
        precision = "int8" if mixed else precision
        if precision not in ("fp32", "fp16", "int8"):
            raise ConversionError(f"tensorrt_ready takes fp32, fp16 or int8 models, not {precision}")
        explicit = artifact.precision in ("int8", "mixed")
        if precision == "int8" and not explicit:
            raise ConversionError("precision int8 needs an int8 QDQ parent (int8_static, scheme 's8s8-symmetric')")
        if precision == "fp32" and artifact.precision != "fp32":
            raise ConversionError(f"precision fp32 needs an fp32 parent, got {artifact.precision}")
        model = load_onnx(artifact.path)
        check_parser_ops(model)
        notes: dict = {"opset": _opset(model)}
        if explicit:
            notes.update(check_explicit_quantization(model))
        profiles = fix_shapes(model, config, ctx.calibration)
        if config.shapes == "static":
            model = onnx.shape_inference.infer_shapes(model)
        settings = EngineSettings(
            precision=precision, workspace_mb=config.workspace_mb,
            builder_optimization_level=config.builder_optimization_level, profiles=profiles,
            dla_core=config.dla_core, explicit_quantization=explicit,
        )
        entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None) or model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, settings.model_dump_json()
        out = ctx.new_path(f"tensorrt-{precision}", ".onnx")
        onnx.save(model, str(out))
        checked = load_onnx(out)
        notes.update({"engine": json.loads(settings.model_dump_json()), "builder_flags": settings.builder_flags,
                      "shapes": config.shapes})
        return Artifact(path=out, format=TENSORRT, precision="mixed" if mixed else precision, inputs=graph_inputs(checked),
                        outputs=graph_outputs(checked), notes=notes)
