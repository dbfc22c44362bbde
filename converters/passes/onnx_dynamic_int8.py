"""Dynamic int8 of ONNX models with onnxruntime.quantization: weights quantized ahead of time,
activations at run time. For MatMul/Gemm-heavy graphs (transformers, MLPs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.int8.holdout import HoldoutScorer
from edgehub.converters.int8.ort_log import OrtLog
from edgehub.converters.int8.ort_quantize import pre_process
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import NotApplicable, Pass, PassConfig, PassContext, register


class Int8DynamicConfig(PassConfig):
    # Per-channel weights: a sentence encoder (all-MiniLM-L6-v2) keeps cosine 0.990 with fp32
    # per channel against 0.854 per tensor (0.25x the size either way).
    per_channel: bool = True
    # "auto": both tried on held-back calibration samples when there are any (7-bit weights avoid
    # the U8S8 saturation of CPUs without VNNI; 8-bit ones are finer), else reduce_range.
    reduce_range: bool | Literal["auto"] = "auto"
    op_types_to_quantize: list[str] | None = None
    # Dynamic quantization is for MatMul/Gemm-heavy graphs (transformers, MLPs); on a CNN it
    # quantizes little and what it does computes badly (0.20 agreement measured on a depthwise net):
    # such graphs are skipped unless forced.
    force: bool = False


def conv_weight_share(path: Path) -> float:
    """Share of the graph's weight values that belong to convolutions."""
    import onnx

    graph = onnx.load(str(path)).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    conv = sum(sizes.get(n.input[1], 0) for n in graph.node if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1)
    dense = sum(sizes.get(x, 0) for n in graph.node if n.op_type in ("MatMul", "Gemm") for x in n.input[:2])
    return conv / (conv + dense) if conv + dense else 0.0


@register
class Int8Dynamic(Pass[Int8DynamicConfig]):
    """Dynamic int8: weights quantized ahead of time, activations at run time (no calibration)."""

    name = "int8_dynamic"
    config_model = Int8DynamicConfig

    def run(self, artifact: Artifact, config: Int8DynamicConfig, ctx: PassContext) -> Artifact:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if artifact.precision != "fp32":
            raise ConversionError(f"int8_dynamic needs an fp32 model, got {artifact.precision}")
        share = conv_weight_share(artifact.path)
        if share > 0.5 and not config.force:
            raise NotApplicable(f"{share:.0%} of the weights are convolutions: dynamic int8 quantizes MatMul/Gemm "
                                "at run time and does not hold on convolutional graphs; the static int8 variant "
                                "is the one for this model (force = true builds it anyway)")
        pre = pre_process(artifact.path, ctx.new_path("preprocessed", ".onnx"))
        log = OrtLog()

        def build(reduce_range: bool) -> Path:
            out = ctx.new_path("int8-dynamic", ".onnx")
            with log:
                quantize_dynamic(str(pre), str(out), per_channel=config.per_channel, reduce_range=reduce_range,
                                 weight_type=QuantType.QInt8, op_types_to_quantize=config.op_types_to_quantize)
            return out

        notes: dict = {"per_channel": config.per_channel}
        if config.reduce_range == "auto" and ctx.calibration and not {i.name for i in artifact.inputs} - set(ctx.calibration):
            held = {k: v[-64:] for k, v in ctx.calibration.items()}
            scorer = HoldoutScorer(pre, held, artifact.outputs[0].name if artifact.outputs else "")
            tried = {rr: (path := build(rr), scorer(path)) for rr in (True, False)}
            chosen = max(tried, key=lambda rr: tried[rr][1].cosine)
            out = tried[chosen][0]
            notes.update(reduce_range=chosen, held_back={str(rr).lower(): t[1].as_notes() for rr, t in tried.items()})
        else:
            chosen = True if config.reduce_range == "auto" else config.reduce_range
            out = build(chosen)
            notes["reduce_range"] = chosen
        if log.summary():
            notes["quantizer_log"] = log.summary()
        return onnx_artifact(out, precision="int8", notes=notes)
