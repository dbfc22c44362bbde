"""Graph-level ONNX passes: clean-up with onnxslim, and fp16 conversion."""

from __future__ import annotations

import onnx

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import Pass, PassConfig, PassContext, register


class SlimConfig(PassConfig):
    constant_folding: bool = True


@register
class Slim(Pass[SlimConfig]):
    """Fold constants, fuse and remove redundant nodes with onnxslim; outputs stay unchanged."""

    name = "slim"
    config_model = SlimConfig

    def run(self, artifact: Artifact, config: SlimConfig, ctx: PassContext) -> Artifact:
        import onnxslim

        model = onnx.load(str(artifact.path))
        before = len(model.graph.node)
        try:
            slimmed = onnxslim.slim(model, no_constant_folding=not config.constant_folding)
        except Exception as exc:  # onnxslim raises assorted errors on graphs it cannot simplify
            raise ConversionError(f"onnxslim failed: {exc}") from exc
        out = ctx.new_path("slim", ".onnx")
        onnx.save(slimmed, str(out))
        notes = {"nodes_before": before, "nodes_after": len(slimmed.graph.node)}
        # Same function as the input, so the PyTorch module behind it still describes it.
        return onnx_artifact(out, precision=artifact.precision, notes=notes).model_copy(
            update={"torch_model": artifact.torch_model})


class Fp16Config(PassConfig):
    # Keep float32 inputs/outputs so applications and reference checks need no change.
    keep_io_types: bool = True
    op_block_list: list[str] = []


@register
class Fp16(Pass[Fp16Config]):
    """Convert float32 weights and compute to float16."""

    name = "fp16"
    config_model = Fp16Config

    def run(self, artifact: Artifact, config: Fp16Config, ctx: PassContext) -> Artifact:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        if artifact.precision != "fp32":
            raise ConversionError(f"fp16 needs an fp32 model, got {artifact.precision}")
        model = onnx.load(str(artifact.path))
        converted = convert_float_to_float16(
            model,
            keep_io_types=config.keep_io_types,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + config.op_block_list,
        )
        # The converter appends its input/output Casts out of order; the checker wants them sorted.
        from onnxruntime.transformers.onnx_model import OnnxModel

        sorted_model = OnnxModel(converted)
        sorted_model.topological_sort()
        out = ctx.new_path("fp16", ".onnx")
        onnx.save(sorted_model.model, str(out))
        return onnx_artifact(out, precision="fp16")
