"""Static int8 of ONNX models (QDQ), chosen by measurement: calibration method and kernel scheme,
cross-layer equalization, bias correction and rounding by optimisation, each kept only where it
scores better on held-back calibration data (converters/int8/search.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.int8.calibration import CalibrationMethodName
from edgehub.converters.int8.holdout import HoldoutScorer, Split, split
from edgehub.converters.int8.ort_quantize import Scheme, compact, pre_process, resolve_op_types
from edgehub.converters.int8.search import Search, Settings, Trial, copy_chosen
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import Pass, PassConfig, PassContext, register
from edgehub.protocol.files import sha256_file

AUTO_METHODS: list[CalibrationMethodName] = ["minmax", "percentile", "entropy"]
AUTO_SCHEMES: list[Scheme] = ["u8s8", "reduce_range", "u8u8"]


class Int8StaticConfig(PassConfig):
    # "auto": each method tried on held-back calibration data, the best kept.
    calibrate_method: CalibrationMethodName | Literal["auto"] = "auto"
    # "auto": U8S8, reduce_range and U8U8 kernels tried; U8U8 only when clearly better (slower).
    scheme: Literal["auto", "u8s8", "reduce_range", "u8u8", "s8s8-symmetric"] = "auto"
    # "auto": tried, kept when it scores better; "on": kept regardless; "off": not tried.
    equalize: Literal["auto", "on", "off"] = "auto"
    bias_correction: Literal["auto", "on", "off"] = "auto"
    # "auto": rounding by optimisation only when the result so far misses `max_drop`.
    rounding: Literal["auto", "nearest", "optimized"] = "auto"
    rounding_time_budget_s: float = Field(600.0, gt=0)
    rounding_samples: int = Field(64, ge=1)
    # "auto": small layers (the first convolution, ...) kept float where the held-back score says
    # so, within `small_layers_share` of the int8 weights' bytes (converters/int8/small_layers.py).
    small_layers: Literal["auto", "off"] = "auto"
    small_layers_share: float = Field(0.02, ge=0, le=1)
    # The drop against fp32 that counts as good enough: the selection gate's default budgets
    # (1 point of accuracy; agreement or cosine 0.99).
    max_drop: float = Field(0.01, ge=0, le=1)
    per_channel: bool = True
    calibration_samples: int = Field(256, ge=1)
    # Share of the calibration samples held back to score trials on (0: score on the calibration data).
    held_back_share: float = Field(0.25, ge=0, lt=1)
    num_bins: int = Field(2048, ge=128)
    percentile: float = Field(99.999, gt=50, le=100)
    nodes_to_exclude: list[str] = []
    # "auto": every op for convolutional graphs; only the weight-heavy ops for graphs with
    # attention, where quantized Softmax/LayerNorm/mask arithmetic costs most of the accuracy
    # (measured on the tiny transformer: top-1 agreement 0.64 with all ops, 0.99 without).
    op_types_to_quantize: list[str] | Literal["auto"] | None = "auto"
    # Short internal tensor names and no stored shapes: same computation, a smaller file.
    compact: bool = True


def calibration_data(artifact: Artifact, config: Int8StaticConfig, ctx: PassContext) -> dict:
    """The calibration arrays for this model, checked: clear errors when they are missing."""
    if not ctx.calibration:
        raise ConversionError("int8_static needs calibration data (the eval set or --calib)")
    missing = {i.name for i in artifact.inputs} - set(ctx.calibration)
    if missing:
        raise ConversionError(f"calibration data lacks inputs: {', '.join(sorted(missing))}")
    return {k: v[: config.calibration_samples] for k, v in ctx.calibration.items()}


@dataclass
class Built:
    """The chosen int8 network and what made it, for passes that go on from it (int8_guarded)."""

    artifact: Artifact
    chosen: Trial
    search: Search
    float_graph: Path  # the fp32 graph with float weights: what a layer kept float computes with
    scorer: HoldoutScorer
    notes: dict


def _settings(config: Int8StaticConfig, op_types: list[str] | None) -> Settings:
    methods = AUTO_METHODS if config.calibrate_method == "auto" else [config.calibrate_method]
    schemes = AUTO_SCHEMES if config.scheme == "auto" else [config.scheme]
    return Settings(methods=list(methods), schemes=list(schemes), equalize=config.equalize,
                    bias_correction=config.bias_correction, rounding=config.rounding,
                    rounding_samples=config.rounding_samples, rounding_time_budget_s=config.rounding_time_budget_s,
                    per_channel=config.per_channel,
                    nodes_to_exclude=list(config.nodes_to_exclude), op_types=op_types, num_bins=config.num_bins,
                    percentile=config.percentile, small_layers=config.small_layers,
                    small_layers_share=config.small_layers_share)


@register
class Int8Static(Pass[Int8StaticConfig]):
    """Post-training static int8 quantization in QDQ form, calibrated on sample inputs."""

    name = "int8_static"
    config_model = Int8StaticConfig

    def run(self, artifact: Artifact, config: Int8StaticConfig, ctx: PassContext) -> Artifact:
        return self.build(artifact, config, ctx).artifact

    def build(self, artifact: Artifact, config: Int8StaticConfig, ctx: PassContext) -> Built:
        """The search of converters/int8/search.py; the same input and settings within one publish
        are built once (int8_static and int8_guarded share the work)."""
        if artifact.precision != "fp32":
            raise ConversionError(f"int8_static needs an fp32 model, got {artifact.precision}")
        key = ("int8_static", sha256_file(artifact.path), config.model_dump_json(include=set(Int8StaticConfig.model_fields)))
        if key in ctx.memo:
            return ctx.memo[key]
        data = calibration_data(artifact, config, ctx)
        parts = split(data, config.held_back_share) if config.held_back_share > 0 else Split(data, data, False)
        pre = pre_process(artifact.path, ctx.new_path("preprocessed", ".onnx"))
        op_types = resolve_op_types(pre, config.op_types_to_quantize)
        ctx.on_progress("running the fp32 model on the held-back samples")
        # TensorRT computes a Q/DQ graph with int32 sums: score such trials unfused (no CPU saturation).
        scorer = HoldoutScorer(pre, parts.held, artifact.outputs[0].name if artifact.outputs else "",
                               unfused=config.scheme == "s8s8-symmetric")
        search = Search(pre, parts.calibrate, scorer, _settings(config, op_types), ctx.new_path, ctx.on_progress)
        with search.log:  # every ONNX Runtime message of the search goes to the notes, none to the terminal
            best = search.choose_calibration()
            nearest = search.try_equalization(best)
            best = search.try_bias_correction(nearest)
            best = search.try_small_float_layers(best, search.notes.setdefault("small_layers_float", {}))
            best = search.try_rounding(best, nearest, self._misses_budget(artifact, best, config, ctx, search))
        out = copy_chosen(best, ctx.new_path(f"int8-{best.scheme}", ".onnx"))
        if config.compact:
            compact(out)
        n_cal, n_held = parts.sizes
        notes = {**search.summary(best), "calibration_samples": n_cal, "held_back_samples": n_held if parts.separate else 0,
                 "op_types": op_types or "all"}
        built = Built(onnx_artifact(out, precision="int8", notes=notes), best, search, best.float_graph, scorer, notes)
        ctx.memo[key] = built
        return built

    @staticmethod
    def _misses_budget(artifact: Artifact, best: Trial, config: Int8StaticConfig, ctx: PassContext,
                       search: Search) -> bool:
        """Whether the result so far misses `max_drop`: on the eval set in the gate's own terms when
        the context can score, else on the held-back samples."""
        if config.rounding != "auto":
            return config.rounding == "optimized"
        if ctx.score is None:
            return best.score.drop() > config.max_drop
        ctx.on_progress("measuring fp32 and the int8 so far on the eval set")
        baseline = float(ctx.score(artifact))
        current = float(ctx.score(onnx_artifact(best.qdq, precision="int8")))
        search.notes["eval_before_rounding"] = {"unit": ctx.score_unit, "fp32": round(baseline, 6),
                                                "int8": round(current, 6)}
        return baseline - current > config.max_drop
