"""Recipe files (TOML/YAML chains) and how they extend or narrow the profiles' plans. Pure."""

from __future__ import annotations

import pytest

from edgehub.converters.errors import ConversionError
from edgehub.converters.recipe_file import Chain, ChainStep, RecipeFile, load_recipe_file
from edgehub.hub.publish.recipes import ROOT, PlanError, plan_for_profiles
from edgehub.zoo.profiles import BUILTIN_PROFILES

X86 = BUILTIN_PROFILES["x86-cpu"]

CHAIN_TOML = """
drop = ["int8-dynamic"]

[[chain]]
from = "fp32"
steps = [
  { pass = "structured_prune", label = "p50", config = { target_ratio = 0.5, epochs = 1 } },
  { pass = "distill", label = "p50-kd", config = { student = "parent" } },
  { pass = "int8_static" },
]
"""

CHAIN_YAML = """
replace_defaults: true
chain:
  - steps:
      - pass: magnitude_prune
        config: {sparsity: 0.6}
      - pass: int8_static
"""


def labels(plan):
    return {v.label: v.parent for v in plan.ordered()}


def test_toml_chain_becomes_a_lineage(tmp_path):
    path = tmp_path / "chains.toml"
    path.write_text(CHAIN_TOML)
    recipe = load_recipe_file(path)
    plan = plan_for_profiles([X86], recipe=recipe)
    tree = labels(plan)
    assert tree["p50"] == ROOT and tree["p50-kd"] == "p50"
    assert tree["p50-kd-int8-static"] == "p50-kd"  # default label: parent label + pass name
    assert "int8-dynamic" not in tree and {"fp16", "int8-static"} <= set(tree)
    step = next(v for v in plan.variants if v.label == "p50").steps[0]
    assert step.pass_name == "structured_prune" and step.config == {"target_ratio": 0.5, "epochs": 1}


def test_yaml_replace_defaults_narrows_to_the_chain(tmp_path):
    path = tmp_path / "chains.yaml"
    path.write_text(CHAIN_YAML)
    tree = labels(plan_for_profiles([X86], recipe=load_recipe_file(path)))
    assert tree == {"fp32": None, "fp32-magnitude-prune": "fp32",
                    "fp32-magnitude-prune-int8-static": "fp32-magnitude-prune"}


def test_chains_in_python_need_no_file():
    recipe = RecipeFile(chains=[Chain(steps=[ChainStep(pass_name="fp16", label="half")])], replace_defaults=True)
    recipe.check_passes()
    assert labels(plan_for_profiles([X86], recipe=recipe)) == {"fp32": None, "half": "fp32"}


def test_training_set_adds_the_training_defaults():
    tree = labels(plan_for_profiles([X86], training=True))
    assert tree["pruned"] == ROOT and tree["pruned-int8"] == "pruned"
    assert tree["distilled"] == ROOT and tree["distilled-int8"] == "distilled"
    assert "pruned" not in labels(plan_for_profiles([X86]))
    # A profile without int8 gets the training passes but no int8 on top.
    nano = labels(plan_for_profiles([BUILTIN_PROFILES["jetson-nano"]], training=True))
    assert "pruned" in nano and not any("int8" in label for label in nano)


@pytest.mark.parametrize("text, message", [
    ('[[chain]]\nsteps = [{ pass = "nope" }]\n', "unknown pass 'nope'"),
    ('[[chain]]\nsteps = [{ pass = "distill", config = { epochz = 1 } }]\n', "epochz"),
    ('[[chain]]\nsteps = []\n', "at least 1"),
    ('[[chain]]\nsteps = [{ pass = "fp16", label = "Bad Label" }]\n', "invalid variant label"),
    ('[[chain]]\nsteps = [{ pass = "fp16", label = "a" }, { pass = "slim", label = "a" }]\n', "used twice"),
    ('mystery = 1\n', "mystery"),
    ('[[chain\n', "not valid TOML"),
])
def test_bad_recipe_files_fail_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConversionError, match=message) as info:
        load_recipe_file(path)
    assert "\n" not in str(info.value) and "bad.toml" in str(info.value)


def test_wrong_suffix_and_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="toml or .yaml"):
        load_recipe_file(tmp_path / "chains.json")
    with pytest.raises(ConversionError, match="cannot read"):
        load_recipe_file(tmp_path / "missing.toml")


def test_chain_from_an_unplanned_variant_and_unknown_drop_are_refused():
    recipe = RecipeFile(chains=[Chain(parent="ghost", steps=[ChainStep(pass_name="fp16")])])
    with pytest.raises(PlanError, match="ghost"):
        plan_for_profiles([X86], recipe=recipe)
    with pytest.raises(PlanError, match="int8-nope"):
        plan_for_profiles([X86], recipe=RecipeFile(drop=["int8-nope"]))
    # A chain may start from a training default when a training set is given.
    recipe = RecipeFile(chains=[Chain(parent="pruned", steps=[ChainStep(pass_name="distill", label="pruned-kd")])])
    assert labels(plan_for_profiles([X86], training=True, recipe=recipe))["pruned-kd"] == "pruned"
