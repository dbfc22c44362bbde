"""4-bit weight-only quantization with ONNX Runtime's MatMulNBits.

onnxruntime's MatMulNBitsQuantizer rewrites MatMul nodes with constant weights only; Gemm
(what exporters emit for nn.Linear) would stay float, so eligible Gemms are first rewritten as
MatMul (+ Add for the bias). Convolutions are not covered by MatMulNBits and stay float; a
model with no eligible layer gets a plain "not applicable" instead of an unchanged copy.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import NotApplicable, Pass, PassConfig, PassContext, register


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite Gemm nodes with a constant weight (alpha = beta = 1, no transA) as MatMul + Add.

    Returns how many were rewritten. The weight is stored (in, out), as MatMul wants it.
    """
    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in model.graph.node:
        eligible = (node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits
                    and _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
                    and _attr(node, "transA", 0) == 0)
        if not eligible:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if _attr(node, "transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = node.name or f"gemm_{rewritten}"
        w_name = f"{name}.weight_kn"
        model.graph.initializer.append(numpy_helper.from_array(weight, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{name}.matmul_out" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{name}_Add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Drop weights nothing reads any more (the original (out, in) copies).
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return rewritten


def eligible_matmuls(model: onnx.ModelProto) -> list[str]:
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2]


class Int4WeightConfig(PassConfig):
    block_size: int = Field(32, ge=16)
    symmetric: bool = True
    # ONNX Runtime's accuracy level for the int4 kernels: 0 (unset), 1 fp32, 2 fp16, 3 bf16, 4 int8.
    accuracy_level: int | None = Field(None, ge=0, le=4)


@register
class Int4Weight(Pass[Int4WeightConfig]):
    """4-bit block-wise weight-only quantization (MatMulNBits) of MatMul and Gemm layers."""

    name = "int4_weight"
    config_model = Int4WeightConfig

    def run(self, artifact: Artifact, config: Int4WeightConfig, ctx: PassContext) -> Artifact:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        if artifact.precision != "fp32":
            raise ConversionError(f"int4_weight needs an fp32 model, got {artifact.precision}")
        model = onnx.load(str(artifact.path))
        gemms = gemm_to_matmul(model)
        candidates = eligible_matmuls(model)
        convs = sum(1 for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))
        if not candidates:
            raise NotApplicable("int4_weight: no MatMul/Gemm layer with constant weights in this model, so 4-bit "
                                f"weight-only quantization (MatMulNBits) does not apply ({convs} convolution(s) "
                                "are not covered by MatMulNBits)")
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=config.block_size, is_symmetric=config.symmetric,
                                         accuracy_level=config.accuracy_level, op_types_to_quantize=("MatMul",))
        # The quantizer logs every node at INFO level and prints; keep the CLI output clean.
        logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):
            quantizer.process()
        quantized = quantizer.model.model
        done = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
        if done == 0:
            raise NotApplicable("int4_weight: MatMulNBits took none of the "
                                f"{len(candidates)} MatMul layer(s) (shapes below its block size?)")
        out = ctx.new_path("int4", ".onnx")
        onnx.save(quantized, str(out))
        left_float = len(candidates) - done
        notes = {"gemm_rewritten_as_matmul": gemms, "eligible_layers": len(candidates), "quantized_layers": done,
                 "convolutions_left_float": convs, "matmuls_left_float": left_float,
                 "block_size": config.block_size, "symmetric": config.symmetric}
        precision = "int4" if convs == 0 and left_float == 0 else "mixed"
        return onnx_artifact(out, precision=precision, notes=notes)
