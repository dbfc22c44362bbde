"""Eval and calibration sets: .npz files bound to a model's inputs, with clear errors."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgehub.protocol.manifest import TensorSpec

LABEL_KEY = "y"
SINGLE_INPUT_KEY = "x"


class EvalSetError(Exception):
    """An eval or calibration set that does not fit the model."""


@dataclass
class EvalSet:
    inputs: dict[str, np.ndarray]  # keyed by the model's input names; first axis = samples
    labels: np.ndarray | None
    # With a task metric (--metric): every array of the file that is not an input (labels too),
    # handed to the metric with the outputs.
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> dict[str, np.ndarray]:
        return {k: v[:n] for k, v in self.inputs.items()}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise EvalSetError(f"{path.name}: not a readable .npz file ({exc.__class__.__name__})") from None


def _fit_dtype(name: str, array: np.ndarray, want: str, source: str) -> np.ndarray:
    want_dt = np.dtype(want)
    if array.dtype == want_dt:
        return array
    # Widening or same-kind casts are safe (float64 -> float32, int32 -> int64); a float
    # array for an integer input is a mistake worth stopping on.
    if np.can_cast(array.dtype, want_dt, casting="same_kind"):
        return array.astype(want_dt)
    raise EvalSetError(f"{source}: '{name}' is {array.dtype}, the model wants {want_dt}")


def bind_eval_set(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], source: str,
                  targets: bool = False) -> EvalSet:
    """Match .npz keys to model inputs, check shapes and dtypes, split off labels. With `targets`
    (a task metric scores the outputs), keys that are not inputs are the metric's targets, and a
    'y' that is not a class label is one of them."""
    arrays = dict(arrays)
    names = [i.name for i in inputs]
    kept: dict[str, np.ndarray] = {}
    if targets:
        single = SINGLE_INPUT_KEY if len(inputs) == 1 and names[0] not in arrays else None
        kept = {k: v for k, v in arrays.items() if k not in names and k != single}
        for k in kept:
            arrays.pop(k)
        if LABEL_KEY in kept and _is_label_array(kept[LABEL_KEY]):
            arrays[LABEL_KEY] = kept[LABEL_KEY]
    labels = arrays.pop(LABEL_KEY, None)
    if len(inputs) == 1 and names[0] not in arrays and SINGLE_INPUT_KEY in arrays:
        arrays[names[0]] = arrays.pop(SINGLE_INPUT_KEY)
    missing = [n for n in names if n not in arrays]
    if missing:
        hint = f" (or '{SINGLE_INPUT_KEY}')" if len(inputs) == 1 else ""
        raise EvalSetError(
            f"{source}: missing key(s) {', '.join(missing)}{hint}; the model's inputs are "
            f"{', '.join(names)} and the file has {', '.join(sorted(arrays)) or 'nothing'}"
        )
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise EvalSetError(f"{source}: unknown key(s) {', '.join(extra)}; expected {', '.join(names)} and optional '{LABEL_KEY}'")

    bound: dict[str, np.ndarray] = {}
    count: int | None = None
    for spec in inputs:
        array = arrays[spec.name]
        if array.ndim != len(spec.shape):
            raise EvalSetError(
                f"{source}: '{spec.name}' has shape {list(array.shape)}, the model wants {spec.shape} "
                f"({len(spec.shape)} dimensions, the first one samples)"
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(want, int) and axis > 0 and got != want:
                raise EvalSetError(
                    f"{source}: '{spec.name}' has shape {list(array.shape)}, the model wants {spec.shape}"
                )
        if count is None:
            count = array.shape[0]
        elif array.shape[0] != count:
            raise EvalSetError(f"{source}: inputs have different numbers of samples ({count} vs {array.shape[0]})")
        bound[spec.name] = np.ascontiguousarray(_fit_dtype(spec.name, array, spec.dtype, source))
    if not count:
        raise EvalSetError(f"{source}: no samples")

    if labels is not None:
        if labels.ndim != 1 or len(labels) != count:
            raise EvalSetError(f"{source}: '{LABEL_KEY}' must be {count} integer labels, got shape {list(labels.shape)}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise EvalSetError(f"{source}: '{LABEL_KEY}' must hold integer class labels, got {labels.dtype}")
        labels = labels.astype(np.int64)
    return EvalSet(inputs=bound, labels=labels, targets=kept)


def _is_label_array(array: np.ndarray) -> bool:
    return array.ndim == 1 and np.issubdtype(array.dtype, np.integer)


def example_batch(arrays: dict[str, np.ndarray], names: list[str], source: str, n: int = 2) -> dict[str, np.ndarray]:
    """The first `n` samples for each named input, to trace a PyTorch model for export.

    Batches of 2 keep exporters from specialising the batch dimension to 1.
    """
    keyed = {k: v for k, v in arrays.items() if k != LABEL_KEY}
    if len(names) == 1 and names[0] not in keyed and SINGLE_INPUT_KEY in keyed:
        keyed[names[0]] = keyed.pop(SINGLE_INPUT_KEY)
    missing = [name for name in names if name not in keyed]
    if missing:
        raise EvalSetError(f"{source}: missing key(s) {', '.join(missing)} for the model's forward() "
                           f"inputs {', '.join(names)}; the file has {', '.join(sorted(keyed)) or 'nothing'}")
    return {name: keyed[name][:n].astype(np.float32) if keyed[name].dtype == np.float64 else keyed[name][:n]
            for name in names}


# Held out from --train for the validation accuracy that training passes report: a tenth of
# the set, at most this many samples.
MAX_VALIDATION = 2000


def bind_training_set(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], source: str):
    """A labelled training set for the passes that train, with a held-out validation slice."""
    from edgehub.converters.passes.base import TrainingSet

    bound = bind_eval_set(arrays, inputs, source)
    if bound.labels is None:
        raise EvalSetError(f"{source}: a training set needs integer labels '{LABEL_KEY}'")
    n = bound.size
    n_val = min(MAX_VALIDATION, n // 10)
    if n - n_val < 2:
        raise EvalSetError(f"{source}: {n} sample(s) are too few to train on")
    # A fixed shuffle, so the held-out slice is not one class when the file is sorted by label.
    order = np.random.default_rng(0).permutation(n)
    train, val = order[: n - n_val], order[n - n_val:]
    return TrainingSet(inputs={k: v[train] for k, v in bound.inputs.items()}, labels=bound.labels[train],
                       val_inputs={k: v[val] for k, v in bound.inputs.items()}, val_labels=bound.labels[val])
