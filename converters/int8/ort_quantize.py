"""ONNX Runtime's static quantizer, driven: kernel schemes, pre-processing, quantizing from a
calibration cache (so calibration runs once per method and each trial only re-quantizes), and
compacting the result."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgehub.converters.int8.calibration import ort_method

# Kernel schemes. On x86 CPUs without VNNI, ONNX Runtime's default U8S8 kernels can saturate
# 16-bit intermediate sums; reduce_range (7-bit weights) or U8U8 avoid it, at a cost: 7-bit
# weights are coarser and U8U8 kernels slower. Which costs least depends on the model and the CPU
# (measured on an AVX-512 VNNI EPYC: a Fashion-MNIST CNN best with reduce_range, EfficientNet-Lite1
# with U8S8, cosine 0.991 against 0.975 for reduce_range), so "auto" tries them on held-back data.
# TensorRT wants symmetric signed int8 for both activations and weights.
Scheme = Literal["u8s8", "reduce_range", "u8u8", "s8s8-symmetric"]

# U8U8 kernels can be much slower: U8U8 must beat the others' cosine by this much to be chosen.
U8U8_MIN_GAIN = 0.0005


def scheme_args(scheme: Scheme) -> dict:
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


def pre_process(src: Path, out: Path) -> Path:
    """Shape inference and graph optimisation that onnxruntime recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    except Exception:
        # Symbolic shape inference fails on some graphs (e.g. some attention patterns); the
        # ONNX shape inference alone is still worth having.
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


ATTENTION_MARKERS = {"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention"}
WEIGHT_OPS = ["MatMul", "Gemm", "Conv", "ConvTranspose"]


def resolve_op_types(path: Path, wanted: list[str] | str | None) -> list[str] | None:
    if wanted != "auto":
        return wanted
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    return WEIGHT_OPS if ops & ATTENTION_MARKERS else None


def quantize_from_ranges(pre: Path, out: Path, ranges: Path, scheme: Scheme, method: str, *, per_channel: bool,
                         nodes_to_exclude: list[str], op_types: list[str] | None,
                         weight_overrides: dict | None = None) -> Path:
    """One QDQ int8 model from calibrated ranges (cheap: callers try several)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    args = scheme_args(scheme)
    extra = {**args.pop("extra_options", {})}
    if weight_overrides:
        extra["TensorQuantOverrides"] = weight_overrides
    quantize_static(
        str(pre), str(out),
        calibration_data_reader=None,
        calibration_cache_path=str(ranges),
        calibrate_method=ort_method(method),  # must name the method the cached ranges came from
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
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
