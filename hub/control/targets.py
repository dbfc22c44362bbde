"""Which model versions a device should run now: one per model (slot). Pure; no I/O.

For each model, in order: an active rollout of it that targets the device's stage; else the
newest `production` alias of it in a scope the device is in (its profile, set by every
deployment, or one of its groups, set when a rollout completes or by `edgehub rollout alias
set`). The newest decision covering a device wins, per model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from edgehub.hub.fleet.groups import scopes_of
from edgehub.hub.fleet.records import AliasRecord
from edgehub.hub.rollout.machine import RolloutState


class Target(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    rollout: int | None = None  # the rollout that targets the device, if any
    why: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.model, self.version)


def resolve_targets(profile: str, tags: list[str], production: dict[str, list[AliasRecord]],
                    memberships: list[tuple[int, int, str]], rollouts: dict[int, RolloutState]) -> list[Target]:
    """One target per model, the newest decision first. `production`: scope -> that scope's
    production aliases (one per model); `memberships`: the device's (rollout id, stage, outcome)
    in active rollouts; `rollouts`: id -> state."""
    found: dict[str, tuple[tuple, Target]] = {}
    for rollout_id, stage, _ in sorted(memberships, reverse=True):  # the newest rollout first
        state = rollouts.get(rollout_id)
        if state is not None and state.targets(stage) and state.spec.model not in found:
            found[state.spec.model] = ((1, rollout_id), Target(
                model=state.spec.model, version=state.spec.version, rollout=rollout_id,
                why=f"rollout #{rollout_id}, stage {stage}"))
    aliases = [a for s in scopes_of(profile, tags) for a in production.get(s, ())]
    for a in sorted(aliases, key=lambda a: (a.updated_at, a.scope), reverse=True):
        if a.model not in found:
            found[a.model] = ((0, a.updated_at.timestamp()), Target(model=a.model, version=a.version,
                                                                    why=f"{a.scope} production"))
    # Rollouts before aliases (a rollout is the newer decision for its devices), newest first.
    return [t for _, t in sorted(found.values(), key=lambda item: item[0], reverse=True)]


def resolve_target(profile: str, tags: list[str], production: dict[str, list[AliasRecord]],
                   memberships: list[tuple[int, int, str]], rollouts: dict[int, RolloutState]) -> Target | None:
    """The newest decision covering the device: what a one-model (v1) agent runs."""
    targets = resolve_targets(profile, tags, production, memberships, rollouts)
    return targets[0] if targets else None
