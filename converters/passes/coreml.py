"""Core ML conversion with coremltools: an fp16 mlprogram from the PyTorch model behind an ONNX
artifact (`coreml`), and weight compression of such a package (`coreml_compress`: int8 linear
weights, or 4-/2-bit k-means palettes). Packages are stored as deterministic zips."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import Pass, PassConfig, PassContext, register
from edgehub.converters.passes.tflite import sample_inputs, torch_module
from edgehub.protocol.formats import COREML, ONNX

DeploymentTarget = Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"]
ComputeUnits = Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"]
COMPRESSED_PRECISION = {"int8": "int8", "palettize-4bit": "int4", "palettize-2bit": "int2"}


@contextlib.contextmanager
def _quiet():
    """coremltools warns about the untested torch version and prints progress bars."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _package_artifact(package: Path, ctx: PassContext, stem: str, precision: str, notes: dict) -> Artifact:
    from edgehub.converters.coreml import inspect_mlpackage, zip_mlpackage

    out = zip_mlpackage(package, ctx.new_path(stem, ".mlpackage.zip"))
    summary = inspect_mlpackage(out)
    if summary.model_type != "mlProgram":
        raise ConversionError(f"coremltools produced a {summary.model_type}, not an mlprogram")
    notes = {**notes, "weights": summary.storage_counts(), "compressed_fraction": summary.compressed_fraction(),
             "specification_version": summary.specification_version,
             "validated": "spec read back: inputs, outputs and weight storage (Core ML predicts only on macOS)"}
    return Artifact(path=out, format=COREML, precision=precision, inputs=summary.inputs,
                    outputs=summary.outputs, notes=notes)


class CoremlConfig(PassConfig):
    minimum_deployment_target: DeploymentTarget = "iOS16"  # mlprogram with fp16 and palettes
    compute_units: ComputeUnits = "ALL"  # what the device should load it with (recorded)


@register
class Coreml(Pass[CoremlConfig]):
    """PyTorch -> Core ML mlprogram in fp16 (float32 inputs and outputs), zipped."""

    name = "coreml"
    output_format = COREML
    config_model = CoremlConfig
    input_formats = (ONNX,)

    def run(self, artifact: Artifact, config: CoremlConfig, ctx: PassContext) -> Artifact:
        import coremltools as ct
        import torch

        if artifact.precision != "fp32":
            raise ConversionError(f"coreml needs the fp32 model, got {artifact.precision}")
        module = torch_module(artifact, self.name, "Core ML")
        sample = sample_inputs(artifact, ctx, self.name)
        inputs = [ct.TensorType(name=n, shape=v.shape, dtype=np.float32 if v.dtype.kind == "f" else np.int32)
                  for n, v in sample.items()]
        outputs = [ct.TensorType(name=o.name, dtype=np.float32) for o in artifact.outputs]
        ctx.on_progress("tracing and converting with coremltools")
        try:
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(module, tuple(torch.from_numpy(v) for v in sample.values()))
                model = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                   compute_precision=ct.precision.FLOAT16,
                                   minimum_deployment_target=getattr(ct.target, config.minimum_deployment_target))
        except Exception as exc:  # tracing and conversion raise many kinds of errors
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ConversionError(f"Core ML conversion failed: {reason}") from None
        package = ctx.new_path("coreml-fp16", ".mlpackage")
        model.save(str(package))
        notes = {"converter": f"coremltools {ct.__version__}", "compute_precision": "fp16",
                 "minimum_deployment_target": config.minimum_deployment_target,
                 "compute_units": config.compute_units, "batch": 1}
        return _package_artifact(package, ctx, "coreml-fp16", "fp16", notes)


class CoremlCompressConfig(PassConfig):
    weights: Literal["int8", "palettize-4bit", "palettize-2bit"] = "int8"
    # Weights with fewer elements stay fp16 (coremltools' own default threshold).
    weight_threshold: int = Field(2048, ge=0)


@register
class CoremlCompress(Pass[CoremlCompressConfig]):
    """Compress a Core ML package's weights: int8 (linear, per-channel) or k-means palettes."""

    name = "coreml_compress"
    config_model = CoremlCompressConfig
    input_formats = (COREML,)

    def run(self, artifact: Artifact, config: CoremlCompressConfig, ctx: PassContext) -> Artifact:
        import coremltools as ct
        from coremltools.optimize import coreml as cto

        from edgehub.converters.coreml import extract_mlpackage

        if artifact.precision != "fp16":
            raise ConversionError(f"coreml_compress needs the fp16 package, got {artifact.precision}")
        unpacked = ctx.new_path("coreml-parent", "")
        unpacked.mkdir(parents=True)
        package = extract_mlpackage(artifact.path, unpacked)
        if config.weights == "int8":
            op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                    weight_threshold=config.weight_threshold)
            compress, method = cto.linear_quantize_weights, "linear symmetric int8, per channel"
        else:
            nbits = 4 if config.weights == "palettize-4bit" else 2
            op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=config.weight_threshold)
            compress, method = cto.palettize_weights, f"k-means palette, {nbits} bits per weight"
        ctx.on_progress(f"compressing weights ({config.weights})")
        try:
            with _quiet():
                model = ct.models.MLModel(str(package), skip_model_load=True)
                compressed = compress(model, cto.OptimizationConfig(global_config=op_config))
        except Exception as exc:  # coremltools raises many kinds of errors
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ConversionError(f"Core ML weight compression failed: {reason}") from None
        stem = f"coreml-{config.weights}"
        out_package = ctx.new_path(stem, ".mlpackage")
        compressed.save(str(out_package))
        notes = {**{k: v for k, v in artifact.notes.items() if k in ("converter", "minimum_deployment_target",
                                                                        "compute_units", "batch")},
                 "compression": method, "weight_threshold": config.weight_threshold}
        return _package_artifact(out_package, ctx, stem, COMPRESSED_PRECISION[config.weights], notes)
