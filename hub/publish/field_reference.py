"""The field reference of a model version: what its eval set looks like to the agent's telemetry
(protocol/telemetry.py), computed once at publish and kept with every variant (`notes.field_reference`).

Per input, the per-sample mean's deciles as bin edges and the eval set's share in each bin; per
output of the fp32 model, the predicted-class shares (class scores) or the L2 norm's deciles and
shares. The devices count their real requests in the same bins, so drift is a PSI over them.
"""

from __future__ import annotations

import numpy as np

from edgehub.protocol.metrics import is_classifier
from edgehub.protocol.telemetry import FieldReference, Reference

BINS = 10


def _binned(values: np.ndarray) -> Reference:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Reference(edges=[], proportions=[1.0])
    edges = sorted({float(e) for e in np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])})
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return Reference(edges=edges, proportions=(counts / counts.sum()).tolist())


def _per_sample(array: np.ndarray, how: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.float64)
    flat = a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(-1, 1)
    return np.linalg.norm(flat, axis=1) if how == "norm" else flat.mean(axis=1)


def field_reference(inputs: dict[str, np.ndarray], outputs: list[np.ndarray] | None,
                    output_names: list[str]) -> FieldReference:
    reference = FieldReference(inputs={name: _binned(_per_sample(a, "mean")) for name, a in inputs.items()
                                       if np.asarray(a).dtype.kind in "fiub"})
    for name, out in zip(output_names, outputs or []):
        out = np.asarray(out)
        if out.ndim == 0 or out.dtype.kind not in "fiu":
            continue
        if is_classifier(out, name) and out.shape[1] <= 4096:
            counts = np.bincount(out.argmax(axis=1), minlength=out.shape[1])
            reference.outputs[name] = Reference(classes=out.shape[1], proportions=(counts / counts.sum()).tolist())
        else:
            reference.outputs[name] = _binned(_per_sample(out, "norm"))
    return reference
