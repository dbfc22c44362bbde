"""Recipe chains declared in a TOML or YAML file (or built in Python with the same models).

A chain is a sequence of passes; every step becomes a registered variant whose parent is the
step before it, so the zoo keeps the lineage (e.g. fp32 -> pruned -> distilled -> int8).

    # chains.toml
    replace_defaults = false     # true: build only the fp32 root and these chains
    drop = ["int8-dynamic"]      # default variants to leave out

    [[chain]]
    from = "fp32"                # the parent of the first step (a label; default fp32)
    steps = [
      { pass = "structured_prune", label = "pruned50", config = { target_ratio = 0.5, epochs = 2 } },
      { pass = "distill", label = "pruned50-kd", config = { student = "parent" } },
      { pass = "int8_static", label = "pruned50-kd-int8" },
    ]

Every pass name and config is checked against the pass registry when the file is read, so a
typo fails before anything is built.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import parse_config
from edgehub.zoo.config_files import read_toml_or_yaml

LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")


class ChainStep(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    pass_name: str = Field(alias="pass")
    label: str | None = None  # default: the previous label + the pass name
    config: dict = Field(default_factory=dict)


class Chain(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    parent: str = Field("fp32", alias="from")
    steps: list[ChainStep] = Field(min_length=1)
    profiles: list[str] | None = None  # default: every publish profile that takes ONNX

    def labelled_steps(self) -> list[tuple[str, str, ChainStep]]:
        """(label, parent label, step) for each step, with default labels filled in."""
        out = []
        parent = self.parent
        for step in self.steps:
            label = step.label or f"{parent}-{step.pass_name.replace('_', '-')}"
            out.append((label, parent, step))
            parent = label
        return out


class RecipeFile(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    replace_defaults: bool = False
    drop: list[str] = Field(default_factory=list)
    chains: list[Chain] = Field(default_factory=list, alias="chain")

    @model_validator(mode="after")
    def _labels(self):
        seen: set[str] = set()
        for chain in self.chains:
            for label, _, _ in chain.labelled_steps():
                if not LABEL_RE.match(label):
                    raise ValueError(f"invalid variant label {label!r}: lower-case letters, digits, '.', '_', '-'")
                if label in seen or label == "fp32":
                    raise ValueError(f"variant label {label!r} is used twice")
                seen.add(label)
        return self

    def check_passes(self) -> None:
        """Every step names a registered pass with a valid config (ConversionError otherwise)."""
        for chain in self.chains:
            for label, _, step in chain.labelled_steps():
                try:
                    parse_config(step.pass_name, step.config)
                except ConversionError as exc:
                    raise ConversionError(f"variant {label!r}: {exc}") from None


def load_recipe_file(path: Path) -> RecipeFile:
    """Read and validate a recipe file; one-line ConversionError on anything wrong."""
    path = Path(path)
    data = read_toml_or_yaml(path, "recipe", ConversionError)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a table of settings and [[chain]] entries")
    try:
        recipe = RecipeFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise ConversionError(f"{path}: {where}: {first['msg']}") from None
    try:
        recipe.check_passes()
    except ConversionError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    return recipe
