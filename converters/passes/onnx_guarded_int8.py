"""Accuracy-guarded static int8 (mixed precision by measurement): build int8_static's network, and
when its drop on the eval set is over budget keep the fewest layers float that bring it within.

Sensitivity is cheap: each layer alone is put back into float in the int8 network by editing the
graph (converters/int8/float_layers.py) and the cosine it recovers on the held-back calibration
samples (run unfused) is its score; no labels needed. Layers are then kept float in that order, and the number
kept is found by bisection on the eval set in the gate's own terms (accuracy with labels, else
top-1 agreement counting near-ties for class scores, else cosine), so only a few evaluations run. The result names
the layers kept float and what they cost in size.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.int8.float_layers import keep_float
from edgehub.converters.int8.ort_quantize import compact
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import NotApplicable, PassContext, register
from edgehub.converters.passes.onnx_quantize import Int8Static, Int8StaticConfig
from edgehub.protocol.files import sha256_file

QUANTIZED_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class Int8GuardedConfig(Int8StaticConfig):
    # Largest allowed drop against fp32 on the eval set, in the gate's terms (the default is the
    # selection gate's: 1 point of accuracy, agreement or cosine 0.99).
    max_drop: float = Field(0.01, ge=0, le=1)
    # At most this share of the quantized layers is kept float (beyond it int8 buys little).
    max_float_share: float = Field(0.5, gt=0, le=1)


def fewest_float_layers(ranked: list[str], within_budget: Callable[[list[str]], bool]) -> tuple[list[str], bool]:
    """The shortest prefix of `ranked` (most sensitive first) with which the model is within
    budget, by bisection (whether a prefix is within budget is taken to grow with its length).
    Returns (kept float, within budget); the whole list when even that is not enough. Pure apart
    from `within_budget`, so it is tested with a stub."""
    if not ranked:
        return [], False
    if not within_budget(ranked):
        return list(ranked), False
    low, high = 0, len(ranked)  # invariant: prefix `high` is within budget, prefix `low` is not
    while high - low > 1:
        mid = (low + high) // 2
        if within_budget(ranked[:mid]):
            high = mid
        else:
            low = mid
    return list(ranked[:high]), True


@register
class Int8Guarded(Int8Static):
    """Static int8 (QDQ) that keeps the most sensitive layers float until within an accuracy budget."""

    name = "int8_guarded"
    config_model = Int8GuardedConfig

    def run(self, artifact: Artifact, config: Int8GuardedConfig, ctx: PassContext) -> Artifact:
        if ctx.score is None:
            raise ConversionError("int8_guarded measures accuracy: it needs an eval set to score with")
        key = ("int8_guarded", sha256_file(artifact.path), config.model_dump_json())
        if key not in ctx.memo:  # a profile's ONNX and TensorRT variants guard the same network
            try:
                ctx.memo[key] = self._guard(artifact, config, ctx)
            except NotApplicable as skipped:
                ctx.memo[key] = skipped
        if isinstance(ctx.memo[key], NotApplicable):
            raise ctx.memo[key]
        return ctx.memo[key]

    def _guard(self, artifact: Artifact, config: Int8GuardedConfig, ctx: PassContext) -> Artifact:
        import onnx

        # The plain search with int8_static's settings, so both variants of a publish share it.
        built = self.build(artifact, Int8StaticConfig(**config.model_dump(include=set(Int8StaticConfig.model_fields))),
                           ctx)
        ctx.on_progress("measuring fp32 and the int8 network on the eval set")
        baseline = float(ctx.score(artifact))
        full_score = float(ctx.score(built.artifact))
        guard = {"max_drop": config.max_drop, "unit": ctx.score_unit, "fp32_score": round(baseline, 6),
                 "int8_score": round(full_score, 6), "int8_drop": round(baseline - full_score, 6)}
        if baseline - full_score <= config.max_drop:
            raise NotApplicable(f"the all-int8 network is within the budget (drop {baseline - full_score:.4f} "
                                f"{ctx.score_unit} <= {config.max_drop}): no layer needs to stay float")

        qdq = onnx.load(str(built.chosen.qdq))
        fp32 = onnx.load(str(built.float_graph))
        layers = [n.name for n in qdq.graph.node if n.op_type in QUANTIZED_LAYERS and n.name
                  and n.name not in config.nodes_to_exclude]
        gains: dict[str, float] = {}
        base = built.scorer(built.chosen.qdq, unfused=True).cosine
        for i, layer in enumerate(layers, 1):
            ctx.on_progress(f"sensitivity {i}/{len(layers)}: {layer}")
            path = ctx.new_path("float-one", ".onnx")
            onnx.save(keep_float(qdq, fp32, {layer}), str(path))
            gains[layer] = round(built.scorer(path, unfused=True).cosine - base, 8)
            path.unlink()
        ranked = sorted((name for name in layers if gains[name] > 0), key=lambda name: -gains[name])
        ranked = ranked[: max(1, int(len(layers) * config.max_float_share))]

        candidates: dict[int, tuple[Artifact, float]] = {}

        def candidate(kept: list[str]) -> tuple[Artifact, float]:
            if len(kept) not in candidates:
                ctx.on_progress(f"measuring with {len(kept)} layer(s) float")
                path = ctx.new_path("int8-guarded", ".onnx")
                onnx.save(keep_float(qdq, fp32, set(kept)), str(path))
                if config.compact:
                    compact(path)
                made = onnx_artifact(path, precision="mixed")
                candidates[len(kept)] = (made, float(ctx.score(made)))
            return candidates[len(kept)]

        kept, within = fewest_float_layers(ranked, lambda prefix: baseline - candidate(prefix)[1] <= config.max_drop)
        if not kept:
            raise NotApplicable("no layer recovers anything when kept float alone: the plain int8 variant is "
                                "the best int8 this model gets")
        result, score = candidate(kept)
        ratio = result.size_bytes / built.artifact.size_bytes
        if not within:  # a variant the gate would reject anyway is not worth a device's benchmark
            raise NotApplicable(f"keeping {len(kept)} of {len(layers)} layers float ({ratio:.2f}x the int8 file) "
                                f"reaches {ctx.score_unit} {score:.4f}, still {baseline - score:.4f} from fp32 "
                                f"(budget {config.max_drop}): not built")
        guard.update(sensitivity={name: gains[name] for name in ranked}, sensitivity_unit="held-back cosine recovered",
                     kept_float=kept, final_score=round(score, 6), final_drop=round(baseline - score, 6),
                     within_budget=within, size_ratio_to_int8=round(ratio, 3),
                     evaluations=len(candidates) + 2)
        return result.model_copy(update={"notes": {**built.notes, "guard": guard}})
