"""Recipe planning: which variants to build for a set of device profiles. Pure functions.

A plan is a tree: every variant names its parent plan by label and the steps that turn the
parent into it. Plans shared by several profiles are built once and tagged with all of them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgehub.zoo.profiles import Profile

# Formats whose converters exist in this version; the rest are reported as skipped.
BUILDABLE_FORMATS = {"onnx"}

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


class Skipped(BaseModel):
    profile: str
    format: str
    reason: str


class Plan(BaseModel):
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
        if profile.runtime in CPU_RUNTIMES:
            plans.append(VariantPlan(
                label="int8-dynamic", parent=ROOT,
                steps=[Step(pass_name="int8_dynamic", config={"reduce_range": True})],
                profiles=[profile.name],
            ))
    return plans


def plan_for_profiles(profiles: list[Profile]) -> Plan:
    """The variants to build for these profiles, merged across profiles by label."""
    merged: dict[str, VariantPlan] = {}
    skipped: list[Skipped] = []
    for profile in profiles:
        for fmt in profile.formats:
            if fmt not in BUILDABLE_FORMATS:
                skipped.append(Skipped(profile=profile.name, format=fmt,
                                       reason=f"no {fmt} converter in this version of edgehub"))
        if "onnx" not in profile.formats:
            continue
        for plan in _onnx_plans(profile):
            if plan.label in merged:
                existing = merged[plan.label]
                if existing.steps != plan.steps:
                    raise ValueError(f"two profiles plan different recipes under the label {plan.label!r}")
                if profile.name not in existing.profiles:
                    existing.profiles.append(profile.name)
            else:
                merged[plan.label] = plan
    if profiles and not merged:
        # Nothing buildable: keep the fp32 root so the model is still registered and measurable.
        merged[ROOT] = VariantPlan(label=ROOT, parent=None, steps=[Step(pass_name="slim")], profiles=[])
    return Plan(variants=list(merged.values()), skipped=skipped)
