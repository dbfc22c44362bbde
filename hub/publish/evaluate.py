"""Running a variant on the eval set (ONNX Runtime, LiteRT) and scoring it against its parent.

These functions run the model in the calling process; `edgehub publish` runs them in a child
process under a time and memory limit (hub/publish/eval_child.py), since the model is untrusted input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehub.protocol.formats import ONNX, TENSORRT, TFLITE
from edgehub.protocol.metrics import NEAR_TIE, agreement, cosine, is_classifier

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def run_onnx(path: Path, inputs: dict[str, np.ndarray], batch_size: int = 256, threads: int = 0,
             simulate_qdq: bool = False) -> list[np.ndarray]:
    """All outputs of the model over all samples, computed in batches. With `simulate_qdq`, Q/DQ
    pairs run as written (quantize, dequantize, float kernels) instead of being fused into ONNX
    Runtime's int8 CPU kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if simulate_qdq:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        from edgehub.converters.errors import ConversionError

        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{Path(path).name}: ONNX Runtime cannot load this model: {reason}") from None
    n = len(next(iter(inputs.values())))
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch_size):
        feed = {k: v[start : start + batch_size] for k, v in inputs.items()}
        chunks.append(session.run(None, feed))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


@dataclass(frozen=True)
class EvalSpec:
    """How the hub runs a variant over the eval set: which runtime, in what batches, with what
    input layout. Plain data, so it can be sent to the evaluation child (hub/publish/eval_child.py)."""

    runtime: str  # "onnx" (ONNX Runtime) or "tflite" (LiteRT)
    batch_size: int = 256
    layout: dict[str, list[int]] | None = None
    # TensorRT computes a Q/DQ graph with int32 accumulation. ONNX Runtime's int8 CPU kernels on a
    # CPU without VNNI saturate 16-bit intermediate sums (measured on an AVX2-only EPYC: a TensorRT
    # int8 CNN at 77.2% vs 82.9% for fp32); the Q/DQ graph run as written is the device's arithmetic.
    simulate_qdq: bool = False


def eval_spec(artifact) -> EvalSpec | None:
    """How to run a variant on the hub, or None where this machine cannot run its format (an
    Edge TPU binary needs the TPU; Core ML predicts only on macOS)."""
    if artifact.format == ONNX:
        return EvalSpec("onnx")
    if artifact.format == TENSORRT:  # TensorRT-ready ONNX: ONNX Runtime computes the same graph
        batch = artifact.inputs[0].shape[0] if artifact.inputs else "batch"
        return EvalSpec("onnx", batch_size=batch if isinstance(batch, int) else 256, simulate_qdq=True)
    if artifact.format == TFLITE:
        return EvalSpec("tflite", layout=artifact.notes.get("layout"))
    return None


def run_spec(path: Path, spec: EvalSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of the model file over all samples, in this process."""
    if spec.runtime == "onnx":
        return run_onnx(path, inputs, batch_size=spec.batch_size, simulate_qdq=spec.simulate_qdq)
    if spec.runtime == "tflite":
        from edgehub.converters.tflite_model import run_tflite

        return run_tflite(path, inputs, layout=spec.layout)
    raise ValueError(f"unknown evaluation runtime {spec.runtime!r}")


def score_outputs(outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None,
                  output_name: str = "") -> dict[str, float | None]:
    """Metrics of one variant against the fp32 parent, fitting the output: top-1 accuracy (with
    labels) and top-1 agreement only for class scores; cosine and max / mean absolute error always.

    The first output is the one scored (the logits, for a classifier).
    """
    out, ref = outputs[0].astype(np.float32), reference[0].astype(np.float32)
    classifier = is_classifier(ref, output_name)
    diff = np.abs(out.astype(np.float64) - ref)
    metrics: dict[str, float | None] = {
        "agreement": round(agreement(out, ref), 6) if classifier else None,
        # what the selection gate reads for unlabeled classifiers (protocol/metrics.py: NEAR_TIE)
        "near_tie_agreement": round(agreement(out, ref, tie=NEAR_TIE), 6) if classifier else None,
        "cosine": round(cosine(out, ref), 6),
        "max_abs_error": round(float(diff.max()), 6) if diff.size else 0.0,
        "mean_abs_error": round(float(diff.mean()), 6) if diff.size else 0.0,
        "accuracy": None,
    }
    if labels is not None and classifier:
        metrics["accuracy"] = round(float((out.argmax(1) == labels).mean()), 6)
    return metrics


def primary_score(metrics: dict) -> tuple[float, str]:
    """The score passes optimise and budgets measure: the publisher's task metric (--metric), else
    accuracy, else top-1 agreement counting near-ties (the selection gate's), else cosine."""
    for unit in ("task", "accuracy", "near_tie_agreement", "agreement", "cosine"):
        if metrics.get(unit) is not None:
            return float(metrics[unit]), unit
    raise ValueError("no metric to score with")
