"""Trials scored on held-back calibration data: which calibration method, kernel scheme, whether
equalization or rounding by optimisation helped. Label-free (outputs against the fp32 model's),
in this process with ONNX Runtime, and never on the eval set, which stays for the variant's
reported metrics.

Trials are ranked by cosine with the fp32 outputs: a continuous measure that a few dozen samples
resolve. Top-1 agreement (classifier outputs only) is recorded beside it, but on a small held-back
set it moves in steps of 1/n and ranks trials by noise (measured on EfficientNet-Lite1: analytic
bias correction left cosine at 0.9962 and moved agreement by 3 points either way between runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehub.protocol.metrics import agreement, cosine, is_classifier

MIN_HELD = 16  # fewer held-back samples than this measure nothing: trials use the calibration data
HELD_SHARE = 0.25


@dataclass(frozen=True)
class Split:
    """Calibration data split: what calibrates, and what trials are scored on."""

    calibrate: dict[str, np.ndarray]
    held: dict[str, np.ndarray]
    separate: bool  # False: too few samples to hold any back; trials score on the calibration data

    @property
    def sizes(self) -> tuple[int, int]:
        return len(next(iter(self.calibrate.values()))), len(next(iter(self.held.values())))


def split(data: dict[str, np.ndarray], share: float = HELD_SHARE, minimum: int = MIN_HELD) -> Split:
    """The last `share` of the samples (at least `minimum`) held back, when enough remain to calibrate."""
    n = len(next(iter(data.values())))
    held = max(minimum, int(round(n * share)))
    if n - held < minimum:
        return Split(data, data, separate=False)
    return Split({k: v[: n - held] for k, v in data.items()}, {k: v[n - held:] for k, v in data.items()}, True)


@dataclass(frozen=True)
class TrialScore:
    cosine: float
    agreement: float | None  # top-1, classifier outputs only

    def as_notes(self) -> dict:
        out = {"cosine": round(self.cosine, 6)}
        if self.agreement is not None:
            out["agreement"] = round(self.agreement, 4)
        return out

    def drop(self) -> float:
        """What the trial lost against fp32 in the gate's terms: 1 - agreement for class
        scores, 1 - cosine otherwise."""
        return 1.0 - (self.agreement if self.agreement is not None else self.cosine)


def run_model(path: Path, inputs: dict[str, np.ndarray], batch: int = 16, unfused: bool = False) -> np.ndarray:
    """The first output of the model over all samples (ONNX Runtime, CPU). `unfused`: Q/DQ pairs
    run as written instead of in ONNX Runtime's int8 kernels (TensorRT's arithmetic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if unfused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    n = len(next(iter(inputs.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in inputs.items()})[0]
                           for i in range(0, n, batch)]).astype(np.float32)


class HoldoutScorer:
    """Scores candidate int8 files against the fp32 model on the held-back samples."""

    def __init__(self, fp32: Path, held: dict[str, np.ndarray], output_name: str = "", unfused: bool = False):
        self.held, self.unfused = held, unfused
        self.reference = run_model(fp32, held)
        self.classifier = is_classifier(self.reference, output_name)

    def __call__(self, candidate: Path, unfused: bool | None = None) -> TrialScore:
        out = run_model(candidate, self.held, unfused=self.unfused if unfused is None else unfused)
        return TrialScore(cosine(out, self.reference),
                          agreement(out, self.reference) if self.classifier else None)
