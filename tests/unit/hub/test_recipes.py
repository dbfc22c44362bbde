"""Recipe planning is pure: profiles in, a variant tree out."""

from __future__ import annotations

import pytest

from edgehub.hub.publish.recipes import ROOT, plan_for_profiles
from edgehub.zoo.profiles import BUILTIN_PROFILES


def labels(plan):
    return [v.label for v in plan.ordered()]


def test_x86_cpu_plan():
    plan = plan_for_profiles([BUILTIN_PROFILES["x86-cpu"]])
    assert labels(plan)[0] == ROOT
    assert set(labels(plan)) == {"fp32", "fp16", "int8-static", "int8-guarded", "int8-dynamic"}
    static = next(v for v in plan.variants if v.label == "int8-static")
    assert static.parent == ROOT and static.steps[0].config["scheme"] == "auto"
    assert plan.skipped == []


def test_shared_variants_are_planned_once_for_several_profiles():
    plan = plan_for_profiles([BUILTIN_PROFILES["x86-cpu"], BUILTIN_PROFILES["rpi5"]])
    roots = [v for v in plan.variants if v.label == ROOT]
    assert len(roots) == 1 and set(roots[0].profiles) == {"x86-cpu", "rpi5"}
    tflite = {v.label: v for v in plan.variants if v.format == "tflite"}
    assert set(tflite) == {"tflite-fp32", "tflite-fp16", "tflite-int8"}
    assert all(v.profiles == ["rpi5"] and v.parent == ROOT for v in tflite.values())
    assert plan.skipped == []


def test_tensorrt_profile_gets_symmetric_int8_and_no_dynamic():
    plan = plan_for_profiles([BUILTIN_PROFILES["jetson-orin-nano"]])
    assert "int8-static-s8s8-symmetric" in labels(plan)
    assert "int8-dynamic" not in labels(plan)


def test_profile_without_int8_gets_none():
    plan = plan_for_profiles([BUILTIN_PROFILES["jetson-nano"]])
    assert not any(label.startswith("int8") for label in labels(plan))


def test_coral_gets_full_int8_tflite_and_its_edgetpu_compilation():
    plan = plan_for_profiles([BUILTIN_PROFILES["coral-edgetpu"]])
    assert labels(plan) == [ROOT, "tflite-int8", "edgetpu"]
    by_label = {v.label: v for v in plan.variants}
    assert by_label["edgetpu"].parent == "tflite-int8" and by_label["edgetpu"].format == "edgetpu"
    assert by_label[ROOT].profiles == []  # the ONNX root is a parent here, not a Coral candidate


def test_coreml_and_tensorrt_plans():
    coreml = plan_for_profiles([BUILTIN_PROFILES["apple-coreml"]])
    assert {v.label for v in coreml.variants if v.format == "coreml"} >= {"coreml-fp16", "coreml-int8",
                                                                           "coreml-palettize-4bit"}
    jetson = plan_for_profiles([BUILTIN_PROFILES["jetson-orin-nano"]])
    trt = {v.label: v for v in jetson.variants if v.format == "tensorrt"}
    assert set(trt) == {"tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8", "tensorrt-int8-guarded"}
    assert [s.pass_name for s in trt["tensorrt-int8-guarded"].steps] == ["int8_guarded", "tensorrt_ready"]
    assert [s.pass_name for s in trt["tensorrt-int8"].steps] == ["int8_static", "tensorrt_ready"]
    assert trt["tensorrt-int8"].steps[0].config["scheme"] == "s8s8-symmetric"


def test_order_puts_parents_first():
    plan = plan_for_profiles([BUILTIN_PROFILES["x86-cpu"]])
    seen = set()
    for v in plan.ordered():
        assert v.parent is None or v.parent in seen
        seen.add(v.label)


def test_cycle_is_detected():
    plan = plan_for_profiles([BUILTIN_PROFILES["x86-cpu"]])
    plan.variants[0].parent = "int8-static"
    with pytest.raises(ValueError, match="cycle"):
        plan.ordered()


def test_every_builtin_chain_type_checks_and_gets_the_format_its_passes_make():
    from edgehub.converters.passes.base import pass_formats
    from edgehub.hub.publish.recipes import check_formats

    plan = plan_for_profiles(list(BUILTIN_PROFILES.values()), training=True)
    checked = {v.label: v.format for v in check_formats(plan, pass_formats).variants}
    assert checked == {v.label: v.format for v in plan.variants}  # the planners already agree
    assert checked["edgetpu"] == "edgetpu" and checked[ROOT] == "onnx"
    assert {"tflite", "coreml", "tensorrt"} <= set(checked.values())


def test_a_chain_feeding_a_pass_the_wrong_format_fails_before_any_build():
    from edgehub.converters.passes.base import pass_formats
    from edgehub.hub.publish.recipes import BuildPlan, PlanError, Step, VariantPlan, check_formats

    bad = BuildPlan(skipped=[], variants=[
        VariantPlan(label=ROOT, parent=None, steps=[Step(pass_name="slim")], profiles=["rpi5"]),
        VariantPlan(label="tflite-then-int8", parent=ROOT, profiles=["rpi5"],
                    steps=[Step(pass_name="tflite", config={}), Step(pass_name="int8_static", config={})])])
    with pytest.raises(PlanError, match=r"'tflite-then-int8': step 2 \(int8_static\) takes onnx models, but its "
                                        r"input is tflite"):
        check_formats(bad, pass_formats)
    good = BuildPlan(skipped=[], variants=bad.variants[:1] + [bad.variants[1].model_copy(update={
        "label": "tflite-only", "steps": bad.variants[1].steps[:1]})])
    assert [v.format for v in check_formats(good, pass_formats).variants] == ["onnx", "tflite"]
