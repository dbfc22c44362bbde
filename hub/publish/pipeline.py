"""The publish pipeline: source model -> planned variants -> built, measured, signed, registered.

Nothing reaches the registry or the artifact store until every variant is built and measured;
the commit is one registry transaction, and objects written for a failed commit are removed.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import (
    NotApplicable,
    PassContext,
    TrainingSet,
    TrainProgress,
    parse_config,
    pass_formats,
    run_pass,
)
from edgehub.converters.requirements import requirements_of
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.eval_child import EvalLimits, EvalRunner
from edgehub.hub.publish.eval_data import LABEL_KEY, EvalSet, bind_eval_set, bind_training_set, example_batch, load_npz
from edgehub.hub.publish.evaluate import EvalSpec, primary_score, score_outputs
from edgehub.hub.publish.field_reference import field_reference
from edgehub.hub.publish.recipes import BuildPlan, PlanError, Skipped, VariantPlan, check_formats, plan_for_profiles
from edgehub.protocol.files import sha256_file
from edgehub.protocol.manifest import Manifest
from edgehub.zoo.profiles import get_profile, load_profiles
from edgehub.zoo.records import ModelVersionRecord, VariantRecord
from edgehub.zoo.registry import Registry
from edgehub.zoo.signing import HubKey
from edgehub.zoo.store import ArtifactStore

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
REFERENCE_SAMPLES = 8
PREFLIGHT_SAMPLES = 8  # the source model's trial run, before any pass touches it


class PublishError(Exception):
    """A publish request that cannot go ahead; the message says what to do."""


@dataclass
class PublishOptions:
    source: str  # path to an .onnx file, or 'package.module:factory'
    name: str
    eval_path: Path
    profiles: list[str] = field(default_factory=lambda: ["x86-cpu"])
    calib_path: Path | None = None
    weights: Path | None = None
    new_version: bool = False
    profiles_file: Path | None = None
    train_path: Path | None = None  # labelled .npz for the passes that train (pruning, distillation)
    # Inputs without labels (a transfer set): passes that train with a teacher learn its outputs on them.
    unlabeled_path: Path | None = None
    recipe_path: Path | None = None  # TOML/YAML chains that extend or narrow the profiles' recipes
    # Limits of each evaluation's child process (hub/publish/eval_child.py); None: $EDGEHUB_EVAL_TIMEOUT_S /
    # $EDGEHUB_EVAL_MEMORY_MB, else 600 s and 8192 MB.
    eval_timeout_s: float | None = None
    eval_memory_mb: int | None = None
    # 'package.module:function' scoring the outputs on the eval set (higher is better), run in the
    # evaluation child: what passes optimise and the selection gate budgets (metrics "task").
    metric: str | None = None


@dataclass
class PublishOutcome:
    version: ModelVersionRecord
    variants: list[VariantRecord]
    skipped: list[Skipped]
    already_published: bool = False


class ProgressSink:
    """Where the pipeline reports progress; the CLI plugs in rich progress bars."""

    def start(self, label: str, steps: int) -> None:
        """A variant's build begins; it has `steps` units of work."""

    def update(self, label: str, message: str) -> None:
        """What the variant's build is doing now."""

    def advance(self, label: str) -> None:
        """One unit of the variant's work is done."""

    def train(self, label: str, progress: TrainProgress) -> None:
        """A training pass of the variant reports its loss and validation accuracy."""


@dataclass
class _Built:
    plan: VariantPlan
    artifact: Artifact
    recipe: list[dict]
    metrics: dict[str, float | None]
    references: bytes
    outputs: list[np.ndarray] | None = None  # on the eval set, kept for children that cannot run here


def _source_identity(options: PublishOptions, is_torch: bool) -> str:
    if not is_torch and not (options.train_path or options.recipe_path):
        return sha256_file(Path(options.source))
    digest = hashlib.sha256(options.source.encode() if is_torch else sha256_file(Path(options.source)).encode())
    # What gets built depends on the training set and the recipe too: another one is other content.
    for path in (options.weights if is_torch else None, options.train_path, options.unlabeled_path,
                 options.recipe_path):
        if path:
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _validate(options: PublishOptions) -> None:
    if not NAME_RE.match(options.name):
        raise PublishError(f"invalid model name {options.name!r}: use lower-case letters, digits, '.', '_' or '-' (max 64)")
    if not options.profiles:
        raise PublishError("give at least one --profile (see `edgehub profiles list`)")
    for path, what in ((options.eval_path, "eval set"), (options.calib_path, "calibration set"), (options.weights, "weights"),
                       (options.train_path, "training set"), (options.unlabeled_path, "unlabeled set"),
                       (options.recipe_path, "recipe file")):
        if path is not None and not Path(path).is_file():
            raise PublishError(f"{what} {path}: no such file")
    if options.unlabeled_path is not None and options.train_path is None:
        raise PublishError("--unlabeled adds a transfer set to the training set: give --train train.npz too")


def _load_source(options: PublishOptions, arrays: dict[str, np.ndarray], workdir: Path) -> tuple[Artifact, dict]:
    """The fp32 ONNX model to start from, and the recipe step that produced it."""
    from edgehub.converters.torch_export import export_onnx, forward_input_names, is_factory_ref, load_torch_model
    from edgehub.converters.torch_passes.model_io import save_module

    if is_factory_ref(options.source):
        model = load_torch_model(options.source, options.weights)
        example = example_batch(arrays, forward_input_names(model), options.eval_path.name)
        workdir.mkdir(parents=True, exist_ok=True)
        artifact = export_onnx(model, example, workdir / "exported.onnx")
        # Training passes start from (and distil from) the PyTorch model itself.
        artifact = artifact.model_copy(update={"torch_model": save_module(model, workdir / "source-model.pt")})
        config = {"source": options.source, "weights": options.weights.name if options.weights else None}
        return artifact, {"pass": "export", "config": config, "notes": artifact.notes}
    path = Path(options.source)
    if not path.is_file():
        raise PublishError(f"{options.source}: no such file, and not a 'package.module:factory' reference")
    from edgehub.converters.onnx_model import onnx_artifact

    return onnx_artifact(path), {"pass": "source", "config": {"file": path.name}, "notes": {}}


def _references(evalset: EvalSet, outputs: list[np.ndarray], artifact: Artifact) -> bytes:
    """A few eval inputs and this variant's outputs for them, for the on-device check."""
    buffer = io.BytesIO()
    arrays = {f"input.{k}": v for k, v in evalset.head(REFERENCE_SAMPLES).items()}
    arrays.update({f"output.{spec.name}": out[:REFERENCE_SAMPLES] for spec, out in zip(artifact.outputs, outputs)})
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _preflight(root: Artifact, evalset: EvalSet, runner: EvalRunner) -> None:
    """Run the source model on a few eval samples in the evaluation child before any pass runs it
    in this process: the passes execute its graph too (onnxslim folds constant subgraphs, static
    int8 calibrates), so a model that hangs or exhausts memory must fail here, within the limits."""
    batch = root.inputs[0].shape[0] if root.inputs else None
    head = batch if isinstance(batch, int) and batch > 0 else min(PREFLIGHT_SAMPLES, evalset.size)
    runner.evaluate(root, "source", head=head)


def _build(plan: BuildPlan, root: Artifact, root_step: dict, evalset: EvalSet, calib: dict[str, np.ndarray],
           workdir: Path, sink: ProgressSink, runner: EvalRunner,
           training: TrainingSet | None = None) -> tuple[list[_Built], list[Skipped]]:
    built: dict[str, _Built] = {}
    skipped: list[Skipped] = []
    reference: list[np.ndarray] | None = None

    def measured(outputs: list[np.ndarray]) -> dict:
        metrics = score_outputs(outputs, reference, evalset.labels, output_name)
        if runner.metric_value is not None:
            metrics["task"] = round(runner.metric_value, 6)
            if reference_task is not None:
                metrics["task_drop"] = round(reference_task - runner.metric_value, 6)
        return metrics

    def score(candidate: Artifact, label: str) -> float:
        outputs = runner.run(candidate.path, EvalSpec("onnx"), f"{label} candidate")
        return primary_score(measured(outputs))[0]

    reference_task: float | None = None

    output_name = root.outputs[0].name if root.outputs else ""
    unit = "accuracy"
    memo: dict = {}  # work passes share across this publish's variants (one int8 search for two variants)

    for vp in plan.ordered():
        if vp.parent and vp.parent not in built:  # its parent was not applicable
            skipped.append(Skipped(profile=",".join(vp.profiles), format=vp.format, variant=vp.label,
                                   reason=f"its parent {vp.parent} was not built"))
            continue
        sink.start(vp.label, len(vp.steps) + 1)
        parent = built[vp.parent] if vp.parent else None
        artifact = parent.artifact if parent else root
        recipe = list(parent.recipe) if parent else [root_step]
        ctx = PassContext(workdir=workdir / vp.label, calibration=calib,
                          score=(lambda c, label=vp.label: score(c, label)) if reference is not None else None,
                          score_unit=unit,
                          on_progress=lambda message, label=vp.label: sink.update(label, message),
                          training=training, source_model=root.torch_model, memo=memo,
                          on_train_progress=lambda progress, label=vp.label: sink.train(label, progress))
        try:
            for step in vp.steps:
                sink.update(vp.label, step.pass_name)
                config = parse_config(step.pass_name, step.config)
                artifact = run_pass(step.pass_name, artifact, config, ctx)
                recipe.append({"pass": step.pass_name, "config": config.model_dump(mode="json"),
                               "notes": artifact.notes})
                sink.advance(vp.label)
        except NotApplicable as exc:
            sink.update(vp.label, "not applicable")
            skipped.append(Skipped(profile=",".join(vp.profiles), format=vp.format, variant=vp.label,
                                   reason=str(exc)))
            continue
        sink.update(vp.label, "evaluating")
        outputs = runner.evaluate(artifact, vp.label)
        if outputs is not None:
            if reference is None:
                reference, reference_task = outputs, runner.metric_value
            metrics = measured(outputs)
            if vp.parent is None:
                unit = primary_score(metrics)[1]
        elif parent is not None and artifact.format == "edgetpu":
            # The compiled model computes its parent's int8 graph; the TPU itself is not here.
            outputs, metrics = parent.outputs, dict(parent.metrics)
        else:
            # Not runnable on the hub (Core ML needs macOS): no hub metrics; the device checks its
            # outputs against the fp32 reference outputs (agreement >= 0.99) before it is eligible.
            outputs, metrics = reference, {"agreement": None, "cosine": None, "accuracy": None,
                                           "max_abs_error": None, "mean_abs_error": None}
        built[vp.label] = _Built(vp, artifact, recipe, metrics, _references(evalset, outputs, artifact), outputs)
        sink.advance(vp.label)
    return list(built.values()), skipped


def _commit(name: str, version: ModelVersionRecord, built: list[_Built], paths: HubPaths,
            registry: Registry, notes: dict | None = None) -> list[VariantRecord]:
    store = ArtifactStore(paths.artifacts_dir)
    key = HubKey.load_or_create(paths.keys_dir)
    written: list[str] = []

    def put(write: Callable[[], tuple[str, int]]) -> tuple[str, int]:
        sha, size = write()
        if sha not in written:
            written.append(sha)
        return sha, size

    ids = {b.plan.label: f"{name}-v{version.version}-{b.plan.label}" for b in built}
    records: list[VariantRecord] = []
    preexisting = set(store.list())
    try:
        for b in built:
            sha, size = put(lambda b=b: store.put_file(b.artifact.path))
            ref_sha, _ = put(lambda b=b: store.put_bytes(b.references))
            now = datetime.now(timezone.utc)
            manifest = Manifest(
                variant_id=ids[b.plan.label], model=name, version=version.version,
                format=b.artifact.format, precision=b.artifact.precision, sha256=sha, size_bytes=size,
                inputs=b.artifact.inputs, outputs=b.artifact.outputs, references_sha256=ref_sha,
                recipe=b.recipe, created_at=now.isoformat(),
                requires=requirements_of(b.artifact.path, b.artifact.format, b.artifact.notes),
            )
            records.append(VariantRecord(
                id=ids[b.plan.label], model=name, version=version.version,
                parent=ids[b.plan.parent] if b.plan.parent else None, label=b.plan.label,
                profiles=b.plan.profiles, recipe=b.recipe, format=b.artifact.format,
                precision=b.artifact.precision, size_bytes=size, sha256=sha,
                inputs=b.artifact.inputs, outputs=b.artifact.outputs, metrics=b.metrics,
                references_sha256=ref_sha, signed_manifest=key.sign(manifest), created_at=now, notes=notes or {},
            ))
        registry.register(version, records)
    except BaseException:
        for sha in written:
            if sha not in preexisting:
                store.remove(sha)
        raise
    return records


def publish(options: PublishOptions, paths: HubPaths, registry: Registry,
            sink: ProgressSink | None = None) -> PublishOutcome:
    """Build, measure, sign and register the variants of one model for the given profiles."""
    sink = sink or ProgressSink()
    _validate(options)
    known = load_profiles(options.profiles_file)
    profiles = [get_profile(p, known) for p in dict.fromkeys(options.profiles)]
    arrays = load_npz(options.eval_path)
    calib_arrays = load_npz(options.calib_path) if options.calib_path else None
    train_arrays = load_npz(options.train_path) if options.train_path else None
    unlabeled_arrays = load_npz(options.unlabeled_path) if options.unlabeled_path else None
    recipe = _load_recipe(options.recipe_path)
    try:
        plan = check_formats(plan_for_profiles(profiles, training=train_arrays is not None, recipe=recipe),
                             pass_formats)
    except (PlanError, ConversionError) as exc:
        raise PublishError(str(exc)) from None
    _check_training(plan, options, train_arrays is not None)
    if options.metric is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", options.metric):
        raise PublishError(f"--metric {options.metric!r}: expected 'package.module:function'")
    try:
        limits = EvalLimits.resolve(options.eval_timeout_s, options.eval_memory_mb)
    except ValueError as exc:
        raise PublishError(str(exc)) from None

    workdir = paths.work_dir / f"publish-{uuid.uuid4().hex[:12]}"
    runner = EvalRunner(workdir / ".eval-child", limits, options.name)
    try:
        runner.start()  # first, so that the child starts up while the source is loaded and bound
        root, root_step = _load_source(options, arrays, workdir / "source")
        evalset = bind_eval_set(arrays, root.inputs, options.eval_path.name, targets=options.metric is not None)
        calib = bind_eval_set(calib_arrays, root.inputs, options.calib_path.name).inputs if calib_arrays else evalset.inputs
        training = bind_training_set(train_arrays, root.inputs, options.train_path.name) if train_arrays else None
        if training is not None and unlabeled_arrays is not None:
            # Labels in it, if any, are dropped: it is the teacher's outputs the student learns there.
            inputs_only = {k: v for k, v in unlabeled_arrays.items() if k != LABEL_KEY}
            training.unlabeled = bind_eval_set(inputs_only, root.inputs, options.unlabeled_path.name).inputs

        source_sha = _source_identity(options, root_step["pass"] == "export")
        latest = registry.latest_version(options.name)
        if latest is not None and not options.new_version:
            if latest.source_sha256 == source_sha:
                return PublishOutcome(latest, registry.variants(options.name, latest.version), [], already_published=True)
            raise PublishError(
                f"model '{options.name}' v{latest.version} exists with different content; "
                f"use another --name, or --new-version to publish it as v{latest.version + 1}"
            )
        version = ModelVersionRecord(
            name=options.name, version=(latest.version + 1) if latest else 1,
            source_kind="torch" if root_step["pass"] == "export" else "onnx",
            source_ref=options.source if root_step["pass"] == "export" else Path(options.source).name,
            source_sha256=source_sha,
        )
        runner.set_inputs(evalset.inputs)
        if options.metric:
            runner.set_metric(options.metric, evalset.targets)
        _preflight(root, evalset, runner)
        built, not_built = _build(plan, root, root_step, evalset, calib, workdir, sink, runner, training)
        runner.close()
        fp32 = next((b for b in built if b.plan.parent is None), None)
        reference = field_reference(evalset.inputs, fp32.outputs if fp32 else None, [o.name for o in root.outputs])
        records = _commit(options.name, version, built, paths, registry,
                          notes={"field_reference": reference.model_dump(mode="json")})
        return PublishOutcome(version, records, plan.skipped + not_built)
    except ConversionError as exc:
        raise PublishError(str(exc)) from None
    finally:
        runner.close()  # no evaluation child outlives the publish, whatever happened
        shutil.rmtree(workdir, ignore_errors=True)


def _load_recipe(path: Path | None):
    if path is None:
        return None
    from edgehub.converters.recipe_file import load_recipe_file

    try:
        return load_recipe_file(path)
    except ConversionError as exc:
        raise PublishError(str(exc)) from None


def _check_training(plan: BuildPlan, options: PublishOptions, has_training_set: bool) -> None:
    """Training passes need a PyTorch source and a training set: say so before building anything."""
    from edgehub.converters.passes.base import get_pass
    from edgehub.converters.torch_export import is_factory_ref

    trained = sorted({f"{v.label} ({s.pass_name})" for v in plan.variants for s in v.steps if get_pass(s.pass_name).trains})
    if not trained:
        return
    if not is_factory_ref(options.source):
        remedy = "or leave out --train" if options.train_path else "or drop those passes from the recipe"
        raise PublishError(f"{', '.join(trained)} train a PyTorch model, and {Path(options.source).name} is ONNX only: "
                           f"publish the model as 'package.module:factory' (with --weights), {remedy}")
    if not has_training_set:
        raise PublishError(f"{', '.join(trained)} need a training set: give --train train.npz (same format as --eval)")
