"""Accuracy-guarded static int8: quantize everything, and when the drop is over budget keep the
most sensitive layers in float until it is within budget.

Sensitivity of a layer = the drop when only that layer is quantized (every other one float):
it catches a layer whose weights or input activations do not survive int8 (e.g. an activation
with extreme outliers, which crushes every other value of a per-tensor scale to zero). Layers
are then kept float in order of sensitivity, re-measuring after each, until the drop is within
`max_drop`. Calibration runs once; each trial only re-quantizes.
"""

from __future__ import annotations

from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import PassContext, register
from edgehub.converters.passes.onnx_quantize import (
    Int8Static,
    Int8StaticConfig,
    _pre_process,
    calibrate,
    calibration_data,
    compact,
    quantize_from_ranges,
    resolve_op_types,
)


class Int8GuardedConfig(Int8StaticConfig):
    # Largest allowed drop of the context's score (accuracy, or agreement without labels):
    # 0.003 = 0.3 points of top-1.
    max_drop: float = Field(0.003, ge=0, le=1)
    # Which nodes the sensitivity scan may keep in float; None: every node the quantizer may touch.
    scan_op_types: list[str] | None = None
    max_float_layers: int = Field(16, ge=1)


def _node_names(path, op_types: list[str] | None) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if (op_types is None or n.op_type in op_types) and n.name]


def choose_float_layers(baseline: float, full_int8: float, drops: dict[str, float], measure, max_drop: float,
                        limit: int) -> tuple[list[str], float]:
    """Greedy: keep layers float, most sensitive first, until the drop fits the budget.

    `measure(excluded)` scores the model with those layers float. Returns (kept float, score).
    Pure apart from `measure`, so it is tested with a stub scorer.
    """
    kept: list[str] = []
    score = full_int8
    for layer in sorted(drops, key=lambda name: -drops[name])[:limit]:
        if baseline - score <= max_drop:
            break
        kept.append(layer)
        score = measure(kept)
    return kept, score


@register
class Int8Guarded(Int8Static):
    """Static int8 (QDQ) that keeps the most sensitive layers float until within an accuracy budget."""

    name = "int8_guarded"
    config_model = Int8GuardedConfig

    def run(self, artifact: Artifact, config: Int8GuardedConfig, ctx: PassContext) -> Artifact:
        if ctx.score is None:
            raise ConversionError("int8_guarded measures accuracy: it needs an eval set to score with")
        ctx.on_progress("measuring fp32")
        baseline = float(ctx.score(artifact))
        full = super().run(artifact, config, ctx)
        full_score = float(ctx.score(full))
        guard = {"max_drop": config.max_drop, "unit": ctx.score_unit, "fp32_score": round(baseline, 6),
                 "int8_score": round(full_score, 6), "int8_drop": round(baseline - full_score, 6)}
        if baseline - full_score <= config.max_drop:
            return full.model_copy(update={"notes": {**full.notes, "guard": {**guard, "kept_float": [],
                                                                              "within_budget": True,
                                                                              "final_drop": guard["int8_drop"]}}})

        # Over budget: scan per-layer sensitivity with the scheme the plain pass chose.
        scheme = full.notes["scheme"]
        data = calibration_data(artifact, config, ctx)
        pre = _pre_process(artifact.path, ctx)
        op_types = resolve_op_types(pre, config.op_types_to_quantize)
        ranges = calibrate(pre, data, config, ctx, op_types, symmetric=scheme == "s8s8-symmetric")
        scan = config.scan_op_types if config.scan_op_types is not None else op_types
        candidates = [n for n in _node_names(pre, scan) if n not in config.nodes_to_exclude]

        def build(excluded: list[str]) -> Artifact:
            out = ctx.new_path("int8-guarded", ".onnx")
            quantize_from_ranges(pre, out, ranges, scheme, config, config.nodes_to_exclude + excluded, op_types)
            if config.compact:
                compact(out)
            return onnx_artifact(out, precision="mixed" if excluded else "int8")

        drops: dict[str, float] = {}
        for i, name in enumerate(candidates, 1):
            ctx.on_progress(f"sensitivity {i}/{len(candidates)}: {name}")
            alone = build([other for other in candidates if other != name])
            drops[name] = round(baseline - float(ctx.score(alone)), 6)
            alone.path.unlink()
        best: dict[str, Artifact] = {}

        def measure(excluded: list[str]) -> float:
            ctx.on_progress(f"keeping {len(excluded)} layer(s) float")
            best["artifact"] = build(list(excluded))
            return float(ctx.score(best["artifact"]))

        kept, score = choose_float_layers(baseline, full_score, drops, measure, config.max_drop,
                                          config.max_float_layers)
        result = best.get("artifact", full)
        guard.update(sensitivity=drops, kept_float=kept, final_score=round(score, 6),
                     final_drop=round(baseline - score, 6), within_budget=baseline - score <= config.max_drop)
        return result.model_copy(update={"notes": {**full.notes, "guard": guard}})
