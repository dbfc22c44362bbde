"""Recipe planning: which variants to build for a set of device profiles. Pure functions.

A plan is a tree: every variant names its parent plan by label and the steps that turn the
parent into it. Plans shared by several profiles are built once and tagged with all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from edgehub.protocol.formats import COREML, EDGETPU, FORMATS, ONNX, TENSORRT, TFLITE
from edgehub.zoo.profiles import Profile

if TYPE_CHECKING:  # recipe files are read by the converters package; planning only needs its models
    from edgehub.converters.recipe_file import Chain, RecipeFile

# Formats whose converters exist in this version; the rest are reported as skipped.
BUILDABLE_FORMATS = set(FORMATS)

# What each profile's int8 kernel scheme means for the static quantization pass. A generic
# x86 profile may or may not have VNNI, so the hub measures the safe schemes and keeps the better.
STATIC_SCHEME_FOR_PROFILE = {
    "u8s8": "u8s8",
    "reduce_range": "auto",
    "u8u8": "u8u8",
    "s8s8-symmetric": "s8s8-symmetric",
}

CPU_RUNTIMES = {"onnxruntime-cpu"}


class Step(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    pass_name: str = Field(alias="pass")
    config: dict = Field(default_factory=dict)


class VariantPlan(BaseModel):
    label: str
    parent: str | None  # label of the parent plan; None for the root (the fp32 model)
    steps: list[Step]
    profiles: list[str]
    format: str = ONNX


class Skipped(BaseModel):
    profile: str
    format: str
    reason: str
    variant: str | None = None  # a planned variant that was not built (e.g. nothing to quantize)


class BuildPlan(BaseModel):
    variants: list[VariantPlan]
    skipped: list[Skipped]

    def ordered(self) -> list[VariantPlan]:
        """Parents before children."""
        done: set[str | None] = {None}
        out: list[VariantPlan] = []
        pending = list(self.variants)
        while pending:
            ready = [v for v in pending if v.parent in done]
            if not ready:
                raise ValueError("recipe plan has a cycle or a missing parent: " + ", ".join(v.label for v in pending))
            for v in ready:
                out.append(v)
                done.add(v.label)
                pending.remove(v)
        return out


ROOT = "fp32"

# What a training set adds to every ONNX profile's defaults (see `training_plans`); the
# settings bench/compression_bench.py measured (bench/RESULTS.md).
PRUNE_TARGET_MACS = 0.5
PRUNE_FINETUNE = {"epochs": 2, "teacher": "parent"}  # fine-tune with the labels and the unpruned model
STUDENT_PARAMS_RATIO = 0.3
DISTILL_EPOCHS = 5


class PlanError(ValueError):
    """A recipe that cannot be planned (e.g. a chain starting from a variant nobody builds)."""


def int8_step(profile: Profile) -> tuple[str, Step]:
    """The label suffix and step of the profile's static int8 variant."""
    scheme = STATIC_SCHEME_FOR_PROFILE[profile.int8_scheme]
    suffix = "int8" if scheme in ("auto", "reduce_range") else f"int8-{scheme}"
    return suffix, Step(pass_name="int8_static", config={"scheme": scheme, "per_channel": True})


def training_plans(profile: Profile) -> list[VariantPlan]:
    """Structured pruning to half the MACs with fine-tuning, distillation into a student with 0.3x
    the parameters, and int8 on top of each (where the profile takes int8)."""
    names = [profile.name]
    plans = [
        VariantPlan(label="pruned", parent=ROOT, profiles=list(names), steps=[
            Step(pass_name="structured_prune",
                 config={"target_ratio": PRUNE_TARGET_MACS, "metric": "macs", **PRUNE_FINETUNE})]),
        VariantPlan(label="distilled", parent=ROOT, profiles=list(names), steps=[
            Step(pass_name="distill", config={"student": "narrow", "params_ratio": STUDENT_PARAMS_RATIO,
                                              "epochs": DISTILL_EPOCHS})]),
    ]
    if "int8" in profile.precisions:
        suffix, step = int8_step(profile)
        plans += [VariantPlan(label=f"{p.label}-{suffix}", parent=p.label, steps=[step], profiles=list(names))
                  for p in list(plans)]
    return plans


def chain_plans(chain: Chain, profiles: list[str]) -> list[VariantPlan]:
    """One variant per chain step, each the parent of the next."""
    return [VariantPlan(label=label, parent=parent, profiles=list(profiles),
                        steps=[Step(pass_name=step.pass_name, config=step.config)])
            for label, parent, step in chain.labelled_steps()]


def _onnx_plans(profile: Profile) -> list[VariantPlan]:
    plans = [VariantPlan(label=ROOT, parent=None, steps=[Step(pass_name="slim")], profiles=[profile.name])]
    if "fp16" in profile.precisions:
        plans.append(VariantPlan(label="fp16", parent=ROOT, steps=[Step(pass_name="fp16")], profiles=[profile.name]))
    if "int8" in profile.precisions:
        scheme = STATIC_SCHEME_FOR_PROFILE[profile.int8_scheme]
        label = "int8-static" if scheme in ("auto", "reduce_range") else f"int8-static-{scheme}"
        plans.append(VariantPlan(
            label=label, parent=ROOT,
            steps=[Step(pass_name="int8_static", config={"scheme": scheme, "per_channel": True})],
            profiles=[profile.name],
        ))
        plans.append(guarded_plan(label.replace("static", "guarded"), scheme, profile.name))
        if profile.runtime in CPU_RUNTIMES:
            plans.append(VariantPlan(
                label="int8-dynamic", parent=ROOT,
                steps=[Step(pass_name="int8_dynamic", config={})],
                profiles=[profile.name],
            ))
    return plans


def guarded_plan(label: str, scheme: str, profile: str, then: list[Step] = ()) -> VariantPlan:
    """The guarded int8 variant beside a profile's plain one: the same search (a publish runs it
    once), then the fewest layers kept float that bring it within the selection gate's budget.
    Skipped (with the reason) when the plain int8 variant is already within it."""
    return VariantPlan(label=label, parent=ROOT, profiles=[profile],
                       steps=[Step(pass_name="int8_guarded", config={"scheme": scheme, "per_channel": True}),
                              *then])


def _tflite_plans(profile: Profile) -> list[VariantPlan]:
    """rpi/arm64: fp32, fp16, full int8; Coral (int8 only): the full-int8 model to compile."""
    plans = []
    for label, quantization, precision in (("tflite-fp32", "none", "fp32"), ("tflite-fp16", "fp16", "fp16"),
                                           ("tflite-int8", "int8", "int8")):
        if precision in profile.precisions or (profile.name.startswith("coral") and precision == "int8"):
            plans.append(VariantPlan(label=label, parent=ROOT, format=TFLITE, profiles=[profile.name],
                                     steps=[Step(pass_name="tflite", config={"quantization": quantization})]))
    return plans


def _edgetpu_plans(profile: Profile) -> list[VariantPlan]:
    """The full-int8 TFLite compiled for the Edge TPU (where the hub has edgetpu_compiler)."""
    return [VariantPlan(label="edgetpu", parent="tflite-int8", format=EDGETPU, profiles=[profile.name],
                        steps=[Step(pass_name="edgetpu_compile", config={})])]


def _coreml_plans(profile: Profile) -> list[VariantPlan]:
    """mlpackage fp16, then int8 weights and 4-/2-bit palettes where the profile takes them."""
    plans = [VariantPlan(label="coreml-fp16", parent=ROOT, format=COREML, profiles=[profile.name],
                         steps=[Step(pass_name="coreml", config={})])]
    for precision, weights in (("int8", "int8"), ("int4", "palettize-4bit"), ("int2", "palettize-2bit")):
        if precision in profile.precisions:
            plans.append(VariantPlan(label=f"coreml-{weights}", parent="coreml-fp16", format=COREML,
                                     profiles=[profile.name],
                                     steps=[Step(pass_name="coreml_compress", config={"weights": weights})]))
    return plans


def _tensorrt_plans(profile: Profile) -> list[VariantPlan]:
    """TensorRT-ready ONNX: fp32, fp16 (a builder flag), int8 as explicit symmetric QDQ."""
    plans = [VariantPlan(label="tensorrt-fp32", parent=ROOT, format=TENSORRT, profiles=[profile.name],
                         steps=[Step(pass_name="tensorrt_ready", config={})])]
    if "fp16" in profile.precisions:
        plans.append(VariantPlan(label="tensorrt-fp16", parent=ROOT, format=TENSORRT, profiles=[profile.name],
                                 steps=[Step(pass_name="tensorrt_ready", config={"precision": "fp16"})]))
    if "int8" in profile.precisions:
        plans.append(VariantPlan(label="tensorrt-int8", parent=ROOT, format=TENSORRT, profiles=[profile.name],
                                 steps=[Step(pass_name="int8_static", config={"scheme": "s8s8-symmetric",
                                                                               "per_channel": True}),
                                        Step(pass_name="tensorrt_ready", config={})]))
        plans.append(guarded_plan("tensorrt-int8-guarded", "s8s8-symmetric", profile.name,
                                  [Step(pass_name="tensorrt_ready", config={})]).model_copy(update={"format": TENSORRT}))
    return plans


FORMAT_PLANNERS = {"tflite": _tflite_plans, "edgetpu": _edgetpu_plans, "coreml": _coreml_plans,
                   "tensorrt": _tensorrt_plans}


def check_formats(plan: BuildPlan, pass_formats) -> BuildPlan:
    """Type-check every variant's chain before anything is built: each step must take the format
    its input has (the fp32 root is ONNX), and the variant gets the format its last step makes.
    `pass_formats(name)` gives a pass's (input formats, output format or None). Raises PlanError."""
    made: dict[str, str] = {}
    checked = []
    for v in plan.ordered():
        fmt = made[v.parent] if v.parent is not None else ONNX
        for i, step in enumerate(v.steps, 1):
            takes, makes = pass_formats(step.pass_name)
            if fmt not in takes:
                raise PlanError(f"variant {v.label!r}: step {i} ({step.pass_name}) takes {'/'.join(takes)} models, "
                                f"but its input is {fmt}")
            fmt = makes or fmt
        made[v.label] = fmt
        checked.append(v if v.format == fmt else v.model_copy(update={"format": fmt}))
    return BuildPlan(variants=checked, skipped=plan.skipped)


def _root_plan() -> VariantPlan:
    return VariantPlan(label=ROOT, parent=None, steps=[Step(pass_name="slim")], profiles=[])


def _merge(merged: dict[str, VariantPlan], plan: VariantPlan, profile: str) -> None:
    if plan.label in merged:
        existing = merged[plan.label]
        if existing.steps != plan.steps or existing.parent != plan.parent:
            raise PlanError(f"two profiles plan different recipes under the label {plan.label!r}")
        if profile not in existing.profiles:
            existing.profiles.append(profile)
    else:
        merged[plan.label] = plan.model_copy(update={"profiles": [profile]})


def plan_for_profiles(profiles: list[Profile], training: bool = False, recipe: RecipeFile | None = None) -> BuildPlan:
    """The variants to build for these profiles, merged across profiles by label.

    With `training` (a training set was given) the defaults include the training passes; a
    `recipe` file adds chains, drops default variants, or replaces the defaults altogether.
    """
    merged: dict[str, VariantPlan] = {}
    skipped: list[Skipped] = []
    for profile in profiles:
        for fmt in profile.formats:
            if fmt not in BUILDABLE_FORMATS:
                skipped.append(Skipped(profile=profile.name, format=fmt,
                                       reason=f"no {fmt} converter in this version of edgehub"))
        other_formats = [f for f in profile.formats if f in FORMAT_PLANNERS]
        if other_formats:
            # Every converter starts from the fp32 root (which keeps the PyTorch model, if any).
            merged.setdefault(ROOT, _root_plan())
            if "edgetpu" in other_formats and "tflite" not in other_formats:
                other_formats.insert(0, "tflite")  # the Edge TPU compiles the full-int8 TFLite
            for fmt in other_formats:
                for plan in FORMAT_PLANNERS[fmt](profile):
                    _merge(merged, plan, profile.name)
        if "onnx" not in profile.formats:
            continue
        defaults = _onnx_plans(profile) + (training_plans(profile) if training else [])
        if recipe is not None:
            if recipe.replace_defaults:
                defaults = defaults[:1]  # the root
            defaults = [p for p in defaults if p.label == ROOT or p.label not in recipe.drop]
        for plan in defaults:
            _merge(merged, plan, profile.name)
        for chain in recipe.chains if recipe is not None else []:
            if chain.profiles is None or profile.name in chain.profiles:
                for plan in chain_plans(chain, [profile.name]):
                    _merge(merged, plan, profile.name)
    if recipe is not None:
        unknown = sorted(set(recipe.drop) - {p.label for p in _all_default_labels(profiles, training)})
        if unknown:
            raise PlanError(f"recipe drops unknown variant(s) {', '.join(unknown)}")
        missing = sorted({v.parent for v in merged.values() if v.parent is not None and v.parent not in merged})
        if missing:
            raise PlanError(f"recipe chain starts from variant(s) {', '.join(missing)}, which no profile builds here")
    if profiles and not merged:
        # Nothing buildable: keep the fp32 root so the model is still registered and measurable.
        merged[ROOT] = _root_plan()
    return BuildPlan(variants=list(merged.values()), skipped=skipped)


def _all_default_labels(profiles: list[Profile], training: bool) -> list[VariantPlan]:
    return [p for profile in profiles if "onnx" in profile.formats
            for p in _onnx_plans(profile) + (training_plans(profile) if training else [])]
