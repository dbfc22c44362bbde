"""Requests the CLI sends to a hub, local or remote: the HTTP API's bodies are these models, so the
two cannot drift. Values are as a person typed them (`5%`, `fmnist:2`); the hub parses them, so a
bad value gets the same one-line error either way."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutRequest(_Request):
    model: str = Field(description="MODEL or MODEL:VERSION (default: the latest version)")
    group: str = Field(description="a tag, or profile:NAME")
    canary: str = "5%"
    stages: list[str] = Field(default_factory=list, description="further cumulative stages, e.g. ['25%', '50%']")
    success_threshold: str = "95%"
    error_threshold: str = Field("10%", description="a share (10%) or a number of failed devices (3)")
    soak_s: float = Field(0.0, ge=0)
    on_success: Literal["continue", "approve"] = "continue"
    on_error: Literal["rollback", "pause"] = "rollback"
    # A field gate (hub/rollout/machine.FieldGate): judged on the stage's real requests.
    max_error_rate: str | None = Field(None, description="e.g. 2%: the field error rate a stage may show")
    max_p99_ratio: float | None = Field(None, gt=0, description="field p99 vs the previous variant's, e.g. 1.5")
    max_output_shift: float | None = Field(None, ge=0, description="PSI of the outputs vs the previous variant")
    min_requests: int = Field(100, ge=1, description="real requests needed before the field is judged")


class AliasRequest(_Request):
    model: str = Field(description="MODEL or MODEL:VERSION")
    group: str | None = None
    profile: str | None = None


class TagRequest(_Request):
    devices: list[str] = Field(min_length=1, max_length=10_000)
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class StatusQuery(_Request):
    profile: str | None = None
    group: str | None = None
    online: bool | None = None
    rollout: int | None = None
    simulated: bool | None = None


class PublishRollout(_Request):
    """`publish --rollout canary=5%,stages=25%,50%`: a rollout of the new version started with the publish,
    on `group`, or on each published profile (profile:NAME) when no group is given."""

    group: str | None = None
    canary: str = "5%"
    stages: list[str] = Field(default_factory=list)
    success_threshold: str = "95%"
    error_threshold: str = "10%"
    soak_s: float = Field(0.0, ge=0)
    on_success: Literal["continue", "approve"] = "continue"
    on_error: Literal["rollback", "pause"] = "rollback"

    def for_group(self, model: str, group: str) -> RolloutRequest:
        return RolloutRequest(model=model, **self.model_dump(exclude={"group"}), group=group)


_ROLLOUT_KEYS = {"group": "group", "canary": "canary", "stages": "stages", "success": "success_threshold",
                 "error": "error_threshold", "soak": "soak_s", "on_success": "on_success", "on_error": "on_error"}


def parse_publish_rollout(text: str) -> PublishRollout:
    """`canary=5%,stages=25%,50%,error=3,on_error=pause` -> PublishRollout. A part without `=` continues
    the list of the key before it (so stages take commas as the other commands do)."""
    from edgehub.hub.rollout.machine import RolloutError

    values: dict[str, list[str]] = {}
    key = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        if eq:
            key = _ROLLOUT_KEYS.get(name.strip().replace("-", "_"))
            if key is None:
                raise RolloutError(f"bad --rollout {text!r}: unknown key {name!r} (one of {', '.join(_ROLLOUT_KEYS)})")
            values.setdefault(key, []).append(value.strip())
        elif key == "stages":
            values[key].append(part)
        else:
            raise RolloutError(f"bad --rollout {text!r}: {part!r} is not KEY=VALUE")
    try:
        return PublishRollout(**{k: (v if k == "stages" else v[-1]) for k, v in values.items()})
    except ValueError as exc:
        raise RolloutError(f"bad --rollout {text!r}: {str(exc).splitlines()[-1].strip()}") from None


class PublishRequest(_Request):
    """A remote publish: the options of `edgehub publish`, with files as upload ids (hub/jobs/uploads.py).
    `files` keys: source (an .onnx), weights, eval, calib, train, unlabeled, recipe, profiles_file.
    `modules`: dotted module name -> upload id of its .py file, for a PyTorch factory source or a
    --metric module the hub cannot import itself (the hub's own installed modules win)."""

    name: str
    source: str | None = Field(None, description="'package.module:factory' when the source is not an uploaded file")
    files: dict[Literal["source", "weights", "eval", "calib", "train", "unlabeled", "recipe", "profiles_file"], str]
    modules: dict[str, str] = Field(default_factory=dict)
    profiles: list[str] = Field(default_factory=lambda: ["x86-cpu"], min_length=1)
    metric: str | None = None
    new_version: bool = False
    eval_timeout_s: float | None = Field(None, ge=1)
    eval_memory_mb: int | None = Field(None, ge=64)
    deploy: bool = False
    rollout: PublishRollout | None = None
