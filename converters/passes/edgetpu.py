"""The Edge TPU variant: a full-int8 .tflite compiled by `edgetpu_compiler`.

Where the compiler is not installed the pass raises NotApplicable (the publish pipeline reports
the variant as skipped, with the op report's verdict); the full-int8 TFLite it would start from
carries the op report in its notes either way.
"""

from __future__ import annotations

from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import (
    NotApplicable,
    Pass,
    PassConfig,
    PassContext,
    register,
)
from edgehub.protocol.formats import EDGETPU, TFLITE


class EdgetpuCompileConfig(PassConfig):
    timeout_s: int = Field(180, ge=10, le=3600)
    # The oldest Edge TPU runtime the compiled model must run on (the compiler's -m).
    min_runtime_version: int | None = Field(None, ge=10)


def _verdict(summary: dict) -> str:
    text = f"{summary['tpu_ops']} of {summary['ops']} operations would run on the Edge TPU"
    return text + (f"; the CPU takes over at {summary['first_cpu_op']}" if summary["first_cpu_op"] else "")


@register
class EdgetpuCompile(Pass[EdgetpuCompileConfig]):
    """Compile a full-int8 .tflite for the Edge TPU; the op report and compiler log go in the notes."""

    name = "edgetpu_compile"
    output_format = EDGETPU
    config_model = EdgetpuCompileConfig
    input_formats = (TFLITE,)

    def run(self, artifact: Artifact, config: EdgetpuCompileConfig, ctx: PassContext) -> Artifact:
        from edgehub.converters.edgetpu import (
            compile_for_edgetpu,
            edgetpu_op_report,
            find_edgetpu_compiler,
        )

        if artifact.precision != "int8" or not artifact.notes.get("io_quantization"):
            raise ConversionError("edgetpu_compile needs a full-int8 TFLite with int8 inputs and outputs "
                                  "(the tflite pass with quantization 'int8')")
        summary = edgetpu_op_report(artifact.path).summary()
        compiler = find_edgetpu_compiler()
        if compiler is None:
            raise NotApplicable(f"edgetpu_compiler is not installed on the hub (Coral's apt repository); "
                                f"op report: {_verdict(summary)}")
        ctx.on_progress("edgetpu_compiler")
        out_dir = ctx.new_path("edgetpu", "")
        result = compile_for_edgetpu(artifact.path, out_dir, compiler=compiler, timeout_s=config.timeout_s,
                                     min_runtime_version=config.min_runtime_version)
        notes = {
            "compiler": str(compiler.name), "compiler_version": result.compiler_version,
            "min_runtime_version": config.min_runtime_version,
            "tpu_ops": result.tpu_ops, "cpu_ops": result.cpu_ops, "edgetpu_subgraphs": result.subgraphs,
            "compiler_operations": result.operations, "compiler_log": result.log_text,
            "compiler_log_file": result.log_path.name, "op_report": summary,
        }
        # A compiled model computes the same int8 graph: its I/O specs are its parent's.
        return Artifact(path=result.model_path, format=EDGETPU, precision="int8", inputs=artifact.inputs,
                        outputs=artifact.outputs,
                        notes={**notes, "io_quantization": artifact.notes["io_quantization"],
                               **({"layout": artifact.notes["layout"]} if "layout" in artifact.notes else {})})
