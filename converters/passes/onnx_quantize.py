"""int8 quantization of ONNX models with onnxruntime.quantization (static QDQ and dynamic)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.calibration import CalibrationMethodName, compute_ranges, ort_method
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import Pass, PassConfig, PassContext, register

# Kernel schemes. On x86 CPUs without VNNI, ONNX Runtime's default U8S8 kernels can saturate
# 16-bit intermediate sums and lose accuracy; reduce_range (7-bit weights) or U8U8 avoid it.
# TensorRT wants symmetric signed int8 for both activations and weights.
Scheme = Literal["u8s8", "reduce_range", "u8u8", "s8s8-symmetric"]

# Prefer reduce_range (fast U8S8 kernels) unless U8U8 measures clearly better: U8U8 can be
# much slower, so it must buy at least this much score.
U8U8_MIN_GAIN = 0.002


def _scheme_args(scheme: Scheme) -> dict:
    from onnxruntime.quantization import QuantType

    if scheme == "u8s8":
        return dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False)
    if scheme == "reduce_range":
        return dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
    if scheme == "u8u8":
        return dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8, reduce_range=False)
    return dict(
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        reduce_range=False,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )


def _pre_process(src: Path, ctx: PassContext) -> Path:
    """Shape inference and graph optimisation that onnxruntime recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.new_path("preprocessed", ".onnx")
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    except Exception:
        # Symbolic shape inference fails on some graphs (e.g. some attention patterns); the
        # ONNX shape inference alone is still worth having.
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


class Int8StaticConfig(PassConfig):
    calibrate_method: CalibrationMethodName = "minmax"
    per_channel: bool = True
    # "auto" measures reduce_range and u8u8 with the context's score and keeps the better.
    scheme: Literal["auto", "u8s8", "reduce_range", "u8u8", "s8s8-symmetric"] = "auto"
    calibration_samples: int = Field(256, ge=1)
    num_bins: int = Field(2048, ge=128)
    percentile: float = Field(99.999, gt=50, le=100)
    nodes_to_exclude: list[str] = []
    # "auto": every op for convolutional graphs; only the weight-heavy ops for graphs with
    # attention, where quantized Softmax/LayerNorm/mask arithmetic costs most of the accuracy
    # (measured on the tiny transformer: top-1 agreement 0.64 with all ops, 0.99 without).
    op_types_to_quantize: list[str] | Literal["auto"] | None = "auto"
    # Short internal tensor names and no stored shapes: same computation, a smaller file.
    compact: bool = True


ATTENTION_MARKERS = {"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention"}
WEIGHT_OPS = ["MatMul", "Gemm", "Conv", "ConvTranspose"]


def resolve_op_types(path: Path, wanted: list[str] | str | None) -> list[str] | None:
    if wanted != "auto":
        return wanted
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    return WEIGHT_OPS if ops & ATTENTION_MARKERS else None


def calibration_data(artifact: Artifact, config: Int8StaticConfig, ctx: PassContext) -> dict:
    """The calibration arrays for this model, checked: clear errors when they are missing."""
    if not ctx.calibration:
        raise ConversionError("int8_static needs calibration data (the eval set or --calib)")
    missing = {i.name for i in artifact.inputs} - set(ctx.calibration)
    if missing:
        raise ConversionError(f"calibration data lacks inputs: {', '.join(sorted(missing))}")
    return {k: v[: config.calibration_samples] for k, v in ctx.calibration.items()}


def calibrate(pre: Path, data: dict, config: Int8StaticConfig, ctx: PassContext, op_types: list[str] | None,
              *, symmetric: bool) -> Path:
    """Tensor ranges for `pre` (a pre-processed model), written where quantize_static reads its cache."""
    ctx.on_progress(f"calibrating ({config.calibrate_method})")
    return compute_ranges(
        pre, data, config.calibrate_method, ctx.new_path("calibration", ".json"),
        symmetric=symmetric, num_bins=config.num_bins, percentile=config.percentile, op_types=op_types,
    )


def quantize_from_ranges(pre: Path, out: Path, ranges: Path, scheme: Scheme, config: Int8StaticConfig,
                         nodes_to_exclude: list[str], op_types: list[str] | None) -> Path:
    """One QDQ int8 model from calibrated ranges; cheap, so callers may try several exclusions."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    args = _scheme_args(scheme)
    extra = {**args.pop("extra_options", {})}
    quantize_static(
        str(pre), str(out),
        calibration_data_reader=None,
        calibration_cache_path=str(ranges),
        calibrate_method=ort_method(config.calibrate_method),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        nodes_to_exclude=nodes_to_exclude,
        op_types_to_quantize=op_types,
        extra_options=extra,
        **args,
    )
    return out


def compact(path: Path) -> None:
    """Shrink a quantized file without changing what it computes.

    The quantizer names every tensor it adds after its source (".../conv1/Conv_output_0_
    QuantizeLinear_Output") and pre-processing stores shapes for every tensor; in a small
    network these strings weigh as much as the int8 weights. Internal tensors get short names,
    Q/DQ nodes lose theirs, stored shapes go. Graph inputs, outputs and op names stay.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    # All-zero zero points of DequantizeLinear on int8/int32 data (symmetric weights, biases)
    # are the default: leave them out.
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[2] in inits:
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            if zp.dtype.name in ("int8", "int32") and not zp.any():
                del node.input[2]
    used = {n for node in graph.node for n in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
        node.doc_string = ""
    del graph.value_info[:]
    onnx.save(model, str(path))


@register
class Int8Static(Pass[Int8StaticConfig]):
    """Post-training static int8 quantization in QDQ form, calibrated on sample inputs."""

    name = "int8_static"
    config_model = Int8StaticConfig

    def run(self, artifact: Artifact, config: Int8StaticConfig, ctx: PassContext) -> Artifact:
        if artifact.precision != "fp32":
            raise ConversionError(f"int8_static needs an fp32 model, got {artifact.precision}")
        data = calibration_data(artifact, config, ctx)

        pre = _pre_process(artifact.path, ctx)
        op_types = resolve_op_types(pre, config.op_types_to_quantize)
        schemes: list[Scheme] = (
            ["reduce_range", "u8u8"] if config.scheme == "auto" else [config.scheme]
        )
        if len(schemes) > 1 and ctx.score is None:
            schemes = ["reduce_range"]  # nothing to measure with: take the safe default
        ranges: dict[bool, Path] = {}
        built: dict[str, Artifact] = {}
        for scheme in schemes:
            symmetric = scheme == "s8s8-symmetric"
            if symmetric not in ranges:
                ranges[symmetric] = calibrate(pre, data, config, ctx, op_types, symmetric=symmetric)
            ctx.on_progress(f"quantizing ({scheme})")
            out = ctx.new_path(f"int8-{scheme}", ".onnx")
            quantize_from_ranges(pre, out, ranges[symmetric], scheme, config, config.nodes_to_exclude, op_types)
            if config.compact:
                compact(out)
            built[scheme] = onnx_artifact(out, precision="int8")

        scores: dict[str, float] = {}
        if len(built) > 1:
            for scheme, candidate in built.items():
                ctx.on_progress(f"measuring {scheme}")
                scores[scheme] = round(float(ctx.score(candidate)), 6)
            chosen: str = "reduce_range"
            if scores["u8u8"] > scores["reduce_range"] + U8U8_MIN_GAIN:
                chosen = "u8u8"
        else:
            chosen = schemes[0]
        notes = {
            "scheme": chosen,
            "calibrate_method": config.calibrate_method,
            "calibration_samples": len(next(iter(data.values()))),
            "op_types": op_types or "all",
        }
        if scores:
            notes["scheme_scores"] = scores
        return built[chosen].model_copy(update={"notes": notes})


class Int8DynamicConfig(PassConfig):
    per_channel: bool = False
    reduce_range: bool = True
    op_types_to_quantize: list[str] | None = None


@register
class Int8Dynamic(Pass[Int8DynamicConfig]):
    """Dynamic int8: weights quantized ahead of time, activations at run time (no calibration)."""

    name = "int8_dynamic"
    config_model = Int8DynamicConfig

    def run(self, artifact: Artifact, config: Int8DynamicConfig, ctx: PassContext) -> Artifact:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if artifact.precision != "fp32":
            raise ConversionError(f"int8_dynamic needs an fp32 model, got {artifact.precision}")
        pre = _pre_process(artifact.path, ctx)
        out = ctx.new_path("int8-dynamic", ".onnx")
        quantize_dynamic(
            str(pre), str(out),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8 if config.reduce_range else QuantType.QUInt8,
            op_types_to_quantize=config.op_types_to_quantize,
        )
        return onnx_artifact(out, precision="int8", notes={"reduce_range": config.reduce_range})
