"""Passes that change and retrain the PyTorch model behind an ONNX artifact.

structured_prune (torch-pruning + fine-tuning), distill (teacher -> student, KD loss) and
depthwise_separable (k x k convs -> depthwise + pointwise, low-rank init, recovered by
distillation). Each takes an ONNX artifact whose `torch_model` is set (the root of a publish
from a 'package.module:factory' source, or the output of another pass here), trains on
`ctx.training`, and returns the re-exported ONNX with its new module beside it, so they chain.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import NotApplicable, Pass, PassConfig, PassContext, TrainingSet, register
from edgehub.converters.torch_passes.augment import Augment


def input_module(artifact: Artifact, ctx: PassContext, pass_name: str) -> Any:
    """The PyTorch module behind `artifact`, or a clear error on why there is none."""
    from edgehub.converters.torch_passes.model_io import load_module

    if artifact.torch_model is None:
        if ctx.source_model is None:
            raise ConversionError(
                f"pass {pass_name!r} trains a PyTorch model, and this model is ONNX only: publish it as "
                "'package.module:factory' (with --weights) to use training passes")
        raise ConversionError(
            f"pass {pass_name!r} needs the PyTorch model behind its input, which a {artifact.precision} "
            "ONNX-only step (fp16, int8, magnitude pruning) no longer has: put training passes first in the chain")
    return load_module(artifact.torch_model)


def training_set(ctx: PassContext, pass_name: str) -> TrainingSet:
    if ctx.training is None:
        raise ConversionError(f"pass {pass_name!r} needs a training set: give --train train.npz "
                              "(same format as the eval set, with labels 'y')")
    return ctx.training


def teacher_module(which: str, artifact: Artifact, ctx: PassContext, pass_name: str) -> Any:
    from edgehub.converters.torch_passes.model_io import load_module

    if which == "source" and ctx.source_model is not None:
        return load_module(ctx.source_model)
    return input_module(artifact, ctx, pass_name)


def _finish(model: Any, data: TrainingSet, ctx: PassContext, stem: str, notes: dict) -> Artifact:
    from edgehub.converters.torch_passes.cost import macs_and_params
    from edgehub.converters.torch_passes.model_io import as_tensors, example_inputs, export_module

    example = example_inputs(data.inputs)
    macs, params = macs_and_params(model, as_tensors(example))
    ctx.on_progress("exporting")
    return export_module(model, example, ctx.new_path(stem, ".onnx"), ctx.new_path(stem, ".pt"),
                         notes={**notes, "params": params, "macs": macs})


class TrainingConfig(PassConfig):
    epochs: int = Field(1, ge=0, le=1000)
    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(128, ge=1)
    seed: int = 0
    # Random shifts (and mirror flips) of image inputs (N, C, H, W) while training; the teacher, if
    # any, scores each augmented batch (converters/torch_passes/augment.py).
    augment: Augment = "none"
    # With a teacher: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels).
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)


def train_settings(config: TrainingConfig):
    from edgehub.converters.torch_passes.training import TrainSettings

    return TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                         temperature=config.temperature, alpha=config.alpha, augment=config.augment)


class StructuredPruneConfig(TrainingConfig):
    # The share of MACs (or parameters) the pruned model keeps: 0.5 halves the compute.
    target_ratio: float = Field(0.5, gt=0, lt=1)
    metric: Literal["macs", "params"] = "macs"
    # Same share of channels in every layer; False lets channels compete globally by magnitude.
    uniform: bool = True
    # Channel counts stay multiples of this (CPU kernels work in blocks of 8/16 channels).
    round_to: int | None = Field(8, ge=1)
    # Fine-tune with the labels only ("none"), or distil from the unpruned model as well.
    teacher: Literal["none", "parent", "source"] = "none"


@register
class StructuredPrune(Pass[StructuredPruneConfig]):
    """Remove whole channels (torch-pruning dependency graph) to a MACs/params target, then fine-tune."""

    name = "structured_prune"
    trains = True
    config_model = StructuredPruneConfig

    def run(self, artifact: Artifact, config: StructuredPruneConfig, ctx: PassContext) -> Artifact:
        from edgehub.converters.torch_passes.channel_pruning import prune_to_ratio
        from edgehub.converters.torch_passes.model_io import as_tensors, example_inputs
        from edgehub.converters.torch_passes.training import accuracy, fit, set_threads

        model = input_module(artifact, ctx, self.name)
        data = training_set(ctx, self.name)
        set_threads()
        teacher = None if config.teacher == "none" else teacher_module(config.teacher, artifact, ctx, self.name)
        ctx.on_progress(f"pruning to {config.target_ratio:.2f}x {config.metric}")
        stats = prune_to_ratio(model, as_tensors(example_inputs(data.inputs)), config.target_ratio,
                               config.metric, uniform=config.uniform, round_to=config.round_to)
        if len(data.val_labels):
            stats["val_accuracy_before_finetune"] = round(accuracy(model, data.val_inputs, data.val_labels), 5)
        settings = train_settings(config)
        stats["training"] = fit(model, data, settings, teacher=teacher, task="fine-tune",
                                on_progress=ctx.on_train_progress)
        return _finish(model, data, ctx, "pruned", stats)


class DistillConfig(TrainingConfig):
    # "narrow": a narrower copy of the input model (same share of channels removed in every
    # layer, weights kept as the start); "parent": the input model itself (e.g. after pruning);
    # or a 'package.module:factory' reference to a student the user wrote.
    student: str = "narrow"
    params_ratio: float = Field(0.3, gt=0, lt=1)  # for "narrow": the student's share of the params
    round_to: int | None = Field(8, ge=1)  # for "narrow": channel counts stay multiples of this
    # For "narrow": start from the teacher's own (narrowed) weights, or from a fresh random
    # initialisation (seeded by `seed`), the textbook distillation setting.
    init: Literal["teacher", "random"] = "teacher"
    teacher: Literal["source", "parent"] = "source"
    epochs: int = Field(2, ge=0, le=1000)
    lr: float = Field(2e-3, gt=0, le=1)


def reinitialise(model: Any, seed: int) -> None:
    """PyTorch's default initialisation of every layer that has one (BatchNorm's also resets its
    running statistics), seeded, without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()


def make_student(config: DistillConfig, parent: Any, example: tuple) -> tuple[Any, dict]:
    from edgehub.converters.torch_export import is_factory_ref, load_torch_model
    from edgehub.converters.torch_passes.channel_pruning import prune_to_ratio

    if config.init == "random" and config.student != "narrow":
        # A user's factory student starts random anyway; re-initialising "parent" would discard it.
        raise ConversionError(f"distill: init = 'random' applies to student = 'narrow', not {config.student!r}")
    if config.student == "parent":
        return parent, {"student": "parent"}
    if config.student == "narrow":
        student = copy.deepcopy(parent)
        stats = prune_to_ratio(student, example, config.params_ratio, "params", uniform=True,
                               round_to=config.round_to)
        if config.init == "random":
            reinitialise(student, config.seed)
        return student, {"student": "narrow", "init": config.init, "narrowing": stats}
    if is_factory_ref(config.student):
        return load_torch_model(config.student).train(), {"student": config.student}
    raise ConversionError(f"distill: student must be 'narrow', 'parent' or 'package.module:factory', "
                          f"got {config.student!r}")


@register
class Distill(Pass[DistillConfig]):
    """Knowledge distillation: train a student on the teacher's softened outputs and the labels."""

    name = "distill"
    trains = True
    config_model = DistillConfig

    def run(self, artifact: Artifact, config: DistillConfig, ctx: PassContext) -> Artifact:
        from edgehub.converters.torch_passes.cost import macs_and_params
        from edgehub.converters.torch_passes.model_io import as_tensors, example_inputs
        from edgehub.converters.torch_passes.training import accuracy, fit, set_threads

        parent = input_module(artifact, ctx, self.name)
        data = training_set(ctx, self.name)
        set_threads()
        teacher = teacher_module(config.teacher, artifact, ctx, self.name)
        example = as_tensors(example_inputs(data.inputs))
        student, notes = make_student(config, parent, example)
        _, teacher_params = macs_and_params(teacher, example)
        _, student_params = macs_and_params(student, example)
        notes["params_ratio_to_teacher"] = round(student_params / teacher_params, 4)
        if len(data.val_labels):
            notes["teacher_val_accuracy"] = round(accuracy(teacher, data.val_inputs, data.val_labels), 5)
        settings = train_settings(config)
        notes["training"] = fit(student, data, settings, teacher=teacher, task="distill",
                                on_progress=ctx.on_train_progress)
        return _finish(student, data, ctx, "distilled", notes)


class DepthwiseSeparableConfig(TrainingConfig):
    # Convolutions with fewer input channels stay (a 1-channel stem would become rank 1).
    min_in_channels: int = Field(4, ge=2)


@register
class DepthwiseSeparable(Pass[DepthwiseSeparableConfig]):
    """k x k convolutions -> depthwise + pointwise (low-rank init), recovered by distillation from the original."""

    name = "depthwise_separable"
    trains = True
    config_model = DepthwiseSeparableConfig

    def run(self, artifact: Artifact, config: DepthwiseSeparableConfig, ctx: PassContext) -> Artifact:
        from edgehub.converters.torch_passes.depthwise import replace_convolutions
        from edgehub.converters.torch_passes.training import accuracy, fit, set_threads

        original = input_module(artifact, ctx, self.name)
        data = training_set(ctx, self.name)
        set_threads()
        model = copy.deepcopy(original)
        replaced = replace_convolutions(model, config.min_in_channels)
        if not replaced:
            raise NotApplicable(f"depthwise_separable: no standard k x k convolution with at least "
                                f"{config.min_in_channels} input channels (already separable, or none)")
        notes: dict = {"replaced": replaced}
        if len(data.val_labels):
            notes["val_accuracy_after_init"] = round(accuracy(model, data.val_inputs, data.val_labels), 5)
        settings = train_settings(config)
        notes["training"] = fit(model, data, settings, teacher=original, task="recover",
                                on_progress=ctx.on_train_progress)
        return _finish(model, data, ctx, "separable", notes)
