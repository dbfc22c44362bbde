"""Pass interface and registry.

A pass is a pure function of (artifact, typed config, context) -> new artifact. Passes are
registered by name so recipes (lists of {pass, config}) can be written as data, in the style of
Olive's passes. Passes know nothing of the registry, devices or MQTT.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.protocol.formats import ONNX

C = TypeVar("C", bound=BaseModel)


class NotApplicable(ConversionError):
    """The pass has nothing to work on in this model (e.g. no layer it can quantize).

    The publish pipeline reports such a variant as skipped, with this message, instead of failing.
    """


@dataclass
class TrainingSet:
    """Labelled samples for passes that train: inputs keyed by the model's input names.

    `val_inputs`/`val_labels` are held out from training and only reported (validation accuracy
    in the progress bar and the notes), never used to pick a model. `unlabeled` holds inputs
    without labels (a transfer set): training with a teacher learns the teacher's outputs on them
    as well; training without one ignores them.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    val_inputs: dict[str, np.ndarray]
    val_labels: np.ndarray
    unlabeled: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def unlabeled_size(self) -> int:
        return len(next(iter(self.unlabeled.values()))) if self.unlabeled else 0


@dataclass
class TrainProgress:
    """One update from a training loop, for progress bars."""

    task: str  # e.g. "fine-tune", "distill"
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float
    val_accuracy: float | None = None


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are errors, so a typo in a recipe is caught."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassContext:
    """What a pass may need besides its input: a scratch directory and sample data.

    `calibration` maps input names to arrays (first axis = samples) for passes that calibrate.
    `score` rates a candidate artifact against the parent (higher is better, e.g. agreement or
    accuracy on the eval set); passes that choose between settings use it to measure, not guess.
    `score_unit` says what that score is ("task", "accuracy", "near_tie_agreement" or "cosine"), for
    notes and budgets.
    """

    workdir: Path
    calibration: dict[str, np.ndarray] | None = None
    score: Callable[[Artifact], float] | None = None
    score_unit: str = "accuracy"
    on_progress: Callable[[str], None] = field(default=lambda message: None)
    # For passes that train (structured pruning, distillation, ...): the training set, the
    # original PyTorch model (the teacher by default; a file from torch_passes.model_io), and
    # where loss and validation accuracy go while they train.
    training: TrainingSet | None = None
    source_model: Path | None = None
    on_train_progress: Callable[[TrainProgress], None] = field(default=lambda progress: None)
    # Work passes may share within one publish (int8_static's search, which int8_guarded reuses),
    # keyed by what determines it: the caller hands every variant's context the same dict.
    memo: dict = field(default_factory=dict)

    def new_path(self, stem: str, suffix: str) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{stem}{suffix}"
        n = 1
        while path.exists():
            path = self.workdir / f"{stem}-{n}{suffix}"
            n += 1
        return path


class Pass(ABC, Generic[C]):
    """One transformation. Subclasses set `name`, `config_model`, `input_formats` and, when it
    changes the format, `output_format` (protocol/formats.py), so a chain is checked before it runs."""

    name: ClassVar[str]
    config_model: ClassVar[type[PassConfig]]
    input_formats: ClassVar[tuple[str, ...]] = (ONNX,)
    output_format: ClassVar[str | None] = None  # None: the format it was given
    # True for passes that train a PyTorch model (they need a training set and a torch source).
    trains: ClassVar[bool] = False

    @abstractmethod
    def run(self, artifact: Artifact, config: C, ctx: PassContext) -> Artifact:
        """Return a new artifact; never modify the input file."""


_REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    _load_builtin_passes()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConversionError(f"unknown pass {name!r}; known passes: {known}") from None


def available_passes() -> dict[str, type[Pass]]:
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def parse_config(name: str, config: dict | None) -> PassConfig:
    """Validate a recipe step's config against its pass's typed config."""
    cls = get_pass(name)
    try:
        return cls.config_model.model_validate(config or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConversionError(f"pass {name!r}: {where}: {first['msg']}") from None


def pass_formats(name: str) -> tuple[tuple[str, ...], str | None]:
    """(formats the pass takes, format it makes or None for "the one it was given")."""
    cls = get_pass(name)
    return cls.input_formats, cls.output_format


def run_pass(name: str, artifact: Artifact, config: dict | PassConfig | None, ctx: PassContext) -> Artifact:
    """Look up, validate and run one pass."""
    cls = get_pass(name)
    if artifact.format not in cls.input_formats:
        raise ConversionError(
            f"pass {name!r} takes {'/'.join(cls.input_formats)} models, got {artifact.format}"
        )
    cfg = config if isinstance(config, PassConfig) else parse_config(name, config)
    return cls().run(artifact, cfg, ctx)


def _load_builtin_passes() -> None:
    # Imported lazily so that importing the registry does not import onnxruntime.quantization.
    # Device formats: TFLite/LiteRT, Edge TPU, Core ML, TensorRT-ready ONNX.
    from edgehub.converters.passes import (  # noqa: F401
        coreml,
        edgetpu,
        onnx_dynamic_int8,
        onnx_graph,
        onnx_guarded_int8,
        onnx_prune,
        onnx_quantize,
        onnx_weight4,
        tensorrt_onnx,
        tflite,
        torch_compress,
    )
