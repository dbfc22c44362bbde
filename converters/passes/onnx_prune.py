"""Unstructured magnitude pruning of ONNX weights, and sensitivity-guided per-layer ratios.

Zeroed weights do not shrink a dense ONNX file or speed up dense kernels; what sparsity buys
is compressed size (for download and storage), which the notes record: the gzip size of the
file, and a sparse-encoding estimate (a 1-bit mask per weight plus the non-zero values).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import Field, model_validator

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import NotApplicable, Pass, PassConfig, PassContext, register
from edgehub.converters.sensitivity import allocate_ratios, measure_sensitivity, overall_ratio

PRUNABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def prunable_weights(model: onnx.ModelProto, op_types=PRUNABLE_OPS, min_size: int = 1) -> dict[str, int]:
    """{initializer name: element count} of the weight inputs of the given op types."""
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in inits:
            init = inits[node.input[1]]
            size = int(np.prod(init.dims)) if init.dims else 1
            if len(init.dims) >= 2 and size >= min_size:
                out[init.name] = size
    return out


def layer_names(model: onnx.ModelProto, weights: list[str]) -> dict[str, str]:
    """{initializer: name of the node that uses it} ('/layer1/layer1.0/conv1/Conv' says more to a
    person than the exporter's 'onnx::Conv_89'); the initializer name where the node has none."""
    owners = {n.input[1]: n.name for n in model.graph.node if len(n.input) > 1 and n.name}
    return {w: owners.get(w, w) for w in weights}


def magnitude_masks(weights: dict[str, np.ndarray], *, sparsity: float | None = None, threshold: float | None = None,
                    layer_sparsity: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Boolean keep-masks: a global sparsity (one threshold over all layers), an absolute
    threshold, or a sparsity per layer. Pure numpy."""
    if layer_sparsity is not None:
        masks = {}
        for name, w in weights.items():
            ratio = layer_sparsity.get(name, 0.0)
            k = int(round(ratio * w.size))
            if k == 0:
                masks[name] = np.ones(w.shape, dtype=bool)
                continue
            cut = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
            masks[name] = np.abs(w) > cut
        return masks
    if threshold is None:
        everything = np.concatenate([np.abs(w).ravel() for w in weights.values()])
        k = int(round((sparsity or 0.0) * everything.size))
        threshold = -1.0 if k == 0 else float(np.partition(everything, k - 1)[k - 1])
    return {name: np.abs(w) > threshold for name, w in weights.items()}


def sparse_bytes(mask: np.ndarray, itemsize: int) -> int:
    """Size of a bitmap-plus-values encoding of one tensor."""
    return (mask.size + 7) // 8 + int(mask.sum()) * itemsize


def apply_masks(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> dict[str, dict]:
    """Zero the pruned weights in place; per-layer statistics."""
    stats: dict[str, dict] = {}
    for init in model.graph.initializer:
        if init.name in masks:
            w = numpy_helper.to_array(init)
            pruned = np.where(masks[init.name], w, np.zeros_like(w))
            init.CopyFrom(numpy_helper.from_array(pruned, init.name))
            zeros = int((pruned == 0).sum())
            stats[init.name] = {"params": int(w.size), "zeros": zeros, "sparsity": round(zeros / w.size, 4),
                                "sparse_bytes": sparse_bytes(masks[init.name], w.itemsize), "dense_bytes": int(w.nbytes)}
    return stats


def gzip_size(path: Path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def size_notes(parent: Path, pruned: Path, stats: dict[str, dict]) -> dict:
    """What the sparsity buys in bytes: gzip sizes, and the sparse-encoding estimate."""
    raw = pruned.stat().st_size
    dense = sum(s["dense_bytes"] for s in stats.values())
    sparse = sum(s["sparse_bytes"] for s in stats.values())
    gz_parent, gz_pruned = gzip_size(parent), gzip_size(pruned)
    return {"file_bytes": raw, "gzip_bytes_parent": gz_parent, "gzip_bytes": gz_pruned,
            "gzip_ratio_to_parent": round(gz_pruned / gz_parent, 4),
            "sparse_encoding_bytes": raw - dense + sparse,
            "sparse_encoding_ratio": round((raw - dense + sparse) / raw, 4)}


def _summary(stats: dict[str, dict]) -> dict:
    params = sum(s["params"] for s in stats.values())
    zeros = sum(s["zeros"] for s in stats.values())
    return {"pruned_params": params, "zeros": zeros, "sparsity": round(zeros / params, 4) if params else 0.0}


class MagnitudePruneConfig(PassConfig):
    # Exactly one of: a global share of weights to zero, an absolute magnitude threshold, or a
    # share per layer (initializer name -> ratio, e.g. from sensitivity analysis).
    sparsity: float | None = Field(None, ge=0, lt=1)
    threshold: float | None = Field(None, ge=0)
    layer_sparsity: dict[str, float] | None = None
    op_types: list[str] = list(PRUNABLE_OPS)
    min_params: int = Field(16, ge=1)  # smaller tensors (e.g. a 1x1 head) are left alone

    @model_validator(mode="after")
    def _one_target(self):
        given = [k for k in ("sparsity", "threshold", "layer_sparsity") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of sparsity, threshold, layer_sparsity (got {', '.join(given)})")
        if not given:
            self.sparsity = 0.5
        return self


def _load_weights(artifact: Artifact, config_ops, min_params) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    if artifact.precision != "fp32":
        raise ConversionError(f"magnitude pruning needs an fp32 model, got {artifact.precision}")
    model = onnx.load(str(artifact.path))
    names = prunable_weights(model, tuple(config_ops), min_params)
    if not names:
        raise NotApplicable(f"no {'/'.join(config_ops)} weights with at least {min_params} elements to prune")
    inits = {i.name: i for i in model.graph.initializer}
    return model, {n: numpy_helper.to_array(inits[n]) for n in names}


@register
class MagnitudePrune(Pass[MagnitudePruneConfig]):
    """Zero the smallest-magnitude weights (unstructured); record per-layer sparsity and compressed sizes."""

    name = "magnitude_prune"
    config_model = MagnitudePruneConfig

    def run(self, artifact: Artifact, config: MagnitudePruneConfig, ctx: PassContext) -> Artifact:
        model, weights = _load_weights(artifact, config.op_types, config.min_params)
        layer_sparsity = None
        if config.layer_sparsity is not None:  # keys: initializer or node names
            by_node = {node: init for init, node in layer_names(model, list(weights)).items()}
            unknown = sorted(k for k in config.layer_sparsity if k not in weights and k not in by_node)
            if unknown:
                raise ConversionError(f"magnitude_prune: no prunable layer named {', '.join(unknown)}")
            layer_sparsity = {by_node.get(k, k): v for k, v in config.layer_sparsity.items()}
        masks = magnitude_masks(weights, sparsity=config.sparsity, threshold=config.threshold,
                                layer_sparsity=layer_sparsity)
        stats = apply_masks(model, masks)
        out = ctx.new_path("pruned", ".onnx")
        onnx.save(model, str(out))
        notes = {**_summary(stats), "layers": stats, **size_notes(artifact.path, out, stats)}
        return onnx_artifact(out, precision="fp32", notes=notes)


class SensitivityPruneConfig(PassConfig):
    target_sparsity: float = Field(0.7, gt=0, lt=1)  # overall share of prunable weights zeroed
    ratios: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9], min_length=1)
    op_types: list[str] = list(PRUNABLE_OPS)
    min_params: int = Field(16, ge=1)


@register
class SensitivityPrune(Pass[SensitivityPruneConfig]):
    """Measure each layer's accuracy drop at several pruning ratios, allocate per-layer ratios
    for the overall target, and prune by magnitude with them."""

    name = "sensitivity_prune"
    config_model = SensitivityPruneConfig

    def run(self, artifact: Artifact, config: SensitivityPruneConfig, ctx: PassContext) -> Artifact:
        if ctx.score is None:
            raise ConversionError("sensitivity_prune measures accuracy: it needs an eval set to score with")
        if any(not 0 < r < 1 for r in config.ratios):
            raise ConversionError("sensitivity_prune: ratios must lie between 0 and 1")
        model, weights = _load_weights(artifact, config.op_types, config.min_params)
        baseline = float(ctx.score(artifact))

        def score(layer: str, ratio: float) -> float:
            trial = onnx.load(str(artifact.path))
            apply_masks(trial, magnitude_masks({layer: weights[layer]}, layer_sparsity={layer: ratio}))
            path = ctx.new_path("sensitivity", ".onnx")
            onnx.save(trial, str(path))
            result = float(ctx.score(onnx_artifact(path)))
            path.unlink()
            return result

        table = measure_sensitivity(list(weights), config.ratios, baseline, score,
                                    lambda done, total: ctx.on_progress(f"sensitivity {done}/{total}"))
        sizes = {k: int(v.size) for k, v in weights.items()}
        ratios = allocate_ratios(table, sizes, config.target_sparsity)
        stats = apply_masks(model, magnitude_masks(weights, layer_sparsity=ratios))
        names = layer_names(model, list(weights))
        out = ctx.new_path("sensitivity-pruned", ".onnx")
        onnx.save(model, str(out))
        notes = {
            **_summary(stats), "target_sparsity": config.target_sparsity, "unit": ctx.score_unit,
            "baseline_score": round(baseline, 6),
            "allocated_overall": round(overall_ratio(ratios, sizes), 4),
            # JSON keys are strings: ratios as "0.5"
            # Keyed by node name (see layer_names); JSON keys are strings, so ratios as "0.5".
            "sensitivity": {names[w]: {f"{r:g}": d for r, d in row.items()} for w, row in table.items()},
            "layer_ratios": {names[w]: r for w, r in ratios.items()},
            "layers": {names[w]: s for w, s in stats.items()}, **size_notes(artifact.path, out, stats),
        }
        return onnx_artifact(out, precision="fp32", notes=notes)
