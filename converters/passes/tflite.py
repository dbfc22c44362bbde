"""TFLite / LiteRT conversion from the PyTorch model behind an ONNX artifact.

litert-torch (no TensorFlow needed) converts the module directly; ai-edge-quantizer quantizes the
resulting .tflite for the fp16-weight and dynamic-range variants; full int8 is PT2E static
quantization (per-channel symmetric weights, calibrated on the eval/calibration set), which
litert-torch turns into a model with int8 inputs and outputs.

The model is converted at batch 1 (static shapes: what LiteRT on a board and the Edge TPU want).
ONNX-only sources are refused with a clear message: converting ONNX to TFLite needs TensorFlow
(onnx2tf), which also fetches a calibration file from the internet.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
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
from edgehub.protocol.formats import ONNX, TFLITE

TfliteQuantization = Literal["none", "fp16", "dynamic_int8", "int8"]
PRECISION = {"none": "fp32", "fp16": "fp16", "dynamic_int8": "int8", "int8": "int8"}
NCHW_TO_NHWC = [0, 2, 3, 1]


def needs_torch_message(pass_name: str, target: str) -> str:
    return (f"pass {pass_name!r}: {target} conversion needs a PyTorch source: publish the model as "
            "'package.module:factory' (with --weights). An ONNX-only model cannot be converted here: "
            "ONNX to TFLite/Core ML needs TensorFlow (onnx2tf), which downloads files at run time")


def torch_module(artifact: Artifact, pass_name: str, target: str) -> Any:
    """The PyTorch module behind an ONNX artifact, or NotApplicable saying why there is none."""
    from edgehub.converters.torch_passes.model_io import load_module

    if artifact.torch_model is None:
        # NotApplicable: the publish pipeline reports the variant as skipped, with this message,
        # and still publishes the ONNX variants.
        raise NotApplicable(needs_torch_message(pass_name, target))
    return load_module(artifact.torch_model)


def sample_inputs(artifact: Artifact, ctx: PassContext, pass_name: str) -> dict[str, np.ndarray]:
    """One sample per input (batch 1), from the calibration/eval set, keyed by input name."""
    if not ctx.calibration:
        raise ConversionError(f"pass {pass_name!r} needs sample inputs (the eval set or --calib)")
    names = [spec.name for spec in artifact.inputs]
    missing = [n for n in names if n not in ctx.calibration]
    if missing:
        raise ConversionError(f"pass {pass_name!r}: sample data lacks inputs {', '.join(missing)}")
    return {n: np.ascontiguousarray(ctx.calibration[n][:1]) for n in names}


@contextlib.contextmanager
def quiet_conversion():
    """litert-torch and ai-edge-quantizer print progress to stdout; keep it clean for --json."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecation notes, on every copy
        yield


class TfliteConfig(PassConfig):
    # none: fp32; fp16: fp16 weights (dequantized at load, fp16 arithmetic where the CPU has it);
    # dynamic_int8: int8 weights, activations quantized at run time; int8: full integer with
    # int8 inputs/outputs (what the Edge TPU needs).
    quantization: TfliteQuantization = "none"
    # Inputs in NHWC (the TFLite layout), so the model starts without a transpose; the eval set
    # and references must then be given channels-last (recorded in the notes as `layout`).
    channels_last_io: bool = False
    calibration_samples: int = Field(256, ge=1)
    per_channel: bool = True
    # Full int8 only: "auto" tries each on held-back calibration samples (converters/int8/pt2e.py).
    observer: Literal["auto", "histogram", "minmax"] = "auto"
    bias_correction: Literal["auto", "on", "off"] = "auto"
    # "optimized": weights rounded by optimisation, kept even if it scores worse; "nearest": not tried.
    rounding: Literal["auto", "optimized", "nearest"] = "auto"


def _call(sample: dict[str, np.ndarray], positional: bool) -> tuple[tuple, dict]:
    """Sample arguments: by name, so the TFLite signature keeps the model's input names; or by
    position for wrappers whose forward() takes *args (channels-last I/O)."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}
    return (tuple(tensors.values()), {}) if positional else ((), tensors)


def _forward_names(module: Any) -> list[str]:
    from edgehub.converters.torch_export import forward_input_names

    try:
        return forward_input_names(module)
    except ConversionError:
        return []


def _convert_fp32(module: Any, sample: dict[str, np.ndarray], out: Path, positional: bool) -> None:
    import litert_torch

    args, kwargs = _call(sample, positional)
    with quiet_conversion():
        litert_torch.convert(module, sample_args=args or None, sample_kwargs=kwargs or None).export(str(out))


def _convert_int8(module: Any, sample: dict[str, np.ndarray], calibration: dict[str, np.ndarray],
                  config: TfliteConfig, out: Path, ctx: PassContext, positional: bool) -> dict:
    """PT2E static quantization chosen by measurement (converters/int8/pt2e.py); returns its notes."""
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    from edgehub.converters.int8.pt2e import Pt2eSettings, search

    names = list(sample)
    args, kwargs = _call(sample, positional)
    exported = torch.export.export(module, args, kwargs).module()
    count = min(config.calibration_samples, len(calibration[names[0]]))
    settings = Pt2eSettings(observer=config.observer, bias_correction=config.bias_correction,
                            rounding=config.rounding, per_channel=config.per_channel)
    # batch 1: the graph was exported with static shapes
    result = search(exported, lambda i: _call({n: calibration[n][i:i + 1] for n in names}, positional), count,
                    settings, ctx.on_progress)
    ctx.on_progress("converting the int8 network with litert-torch")
    with quiet_conversion():
        litert_torch.convert(result.converted, sample_args=args or None, sample_kwargs=kwargs or None,
                             quant_config=QuantConfig(pt2e_quantizer=result.quantizer)).export(str(out))
    return result.notes


def _quantize_weights(fp32: Path, out: Path, mode: Literal["fp16", "dynamic_int8"]) -> None:
    """fp16 weights (FLOAT_CASTING) or dynamic-range int8 with ai-edge-quantizer."""
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    with quiet_conversion():
        if mode == "fp16":
            qt = quantizer.Quantizer(str(fp32))
            qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                      num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        else:
            qt = quantizer.Quantizer(str(fp32), recipe.dynamic_wi8_afp32())
        qt.quantize(enable_progress_report=False).export_model(str(out), overwrite=True)


class _ChannelsLast:
    """Wraps a module so 4-D inputs arrive NHWC; litert-torch then drops the input transpose."""

    @staticmethod
    def wrap(module: Any, sample: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray], dict[str, list[int]]]:
        import litert_torch

        positions = [i for i, v in enumerate(sample.values()) if v.ndim == 4]
        if not positions:
            raise ConversionError("channels_last_io: the model has no 4-D (image) input")
        wrapped = litert_torch.to_channel_last_io(module, args=positions)
        names = list(sample)
        layout = {names[i]: NCHW_TO_NHWC for i in positions}
        moved = {n: np.ascontiguousarray(np.transpose(v, layout[n])) if n in layout else v for n, v in sample.items()}
        return wrapped, moved, layout


@register
class Tflite(Pass[TfliteConfig]):
    """PyTorch -> .tflite with litert-torch: fp32, fp16 weights, dynamic-range or full int8."""

    name = "tflite"
    output_format = TFLITE
    config_model = TfliteConfig
    input_formats = (ONNX,)

    def run(self, artifact: Artifact, config: TfliteConfig, ctx: PassContext) -> Artifact:
        from edgehub.converters.edgetpu import edgetpu_op_report
        from edgehub.converters.tflite_model import read_tflite, tflite_artifact

        if artifact.precision != "fp32":
            raise ConversionError(f"tflite needs the fp32 model, got {artifact.precision}")
        module = torch_module(artifact, self.name, "TFLite")
        sample = sample_inputs(artifact, ctx, self.name)
        layout: dict[str, list[int]] = {}
        calibration = ctx.calibration or {}
        # By name only when forward()'s parameters carry the model's input names.
        positional = _forward_names(module) != list(sample)
        if config.channels_last_io:
            module, sample, layout = _ChannelsLast.wrap(module, sample)
            calibration = {n: np.transpose(v, layout[n]) if n in layout else v for n, v in calibration.items()}

        notes: dict = {"converter": "litert-torch", "quantization": config.quantization, "batch": 1}
        if layout:
            notes["layout"] = layout
        try:
            if config.quantization == "int8":
                out = ctx.new_path("tflite-int8", ".tflite")
                ctx.on_progress("PT2E int8 quantization")
                search_notes = _convert_int8(module, sample, calibration, config, out, ctx,
                                             positional=positional or bool(layout))
                notes["calibration_samples"] = search_notes.pop("calibration_samples")
                notes["int8_search"] = search_notes
                notes["scheme"] = "int8 symmetric per-channel weights, int8 activations and I/O (PT2E static)"
            else:
                ctx.on_progress("converting with litert-torch")
                fp32 = ctx.new_path("tflite-fp32", ".tflite")
                _convert_fp32(module, sample, fp32, positional=positional or bool(layout))
                out = fp32
                if config.quantization in ("fp16", "dynamic_int8"):
                    ctx.on_progress(f"{config.quantization} weights with ai-edge-quantizer")
                    out = ctx.new_path(f"tflite-{config.quantization}", ".tflite")
                    _quantize_weights(fp32, out, config.quantization)
                if config.quantization == "dynamic_int8":
                    # NOTES.md: tflite-runtime 2.14 cannot load or silently miscomputes these files;
                    # the device's reference check is what catches it.
                    notes["runtime_note"] = "needs ai-edge-litert; tflite-runtime 2.14 computes it wrongly"
        except ConversionError:
            raise
        except Exception as exc:  # litert-torch / torch.export raise many kinds of errors
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ConversionError(f"TFLite conversion failed: {reason}") from None

        graph = read_tflite(out)
        notes["ops"] = len(graph.ops)
        if config.quantization == "int8":
            notes["edgetpu"] = edgetpu_op_report(graph).summary()
        return tflite_artifact(out, precision=PRECISION[config.quantization], notes=notes)
