"""Which model version a device should run now. Pure; no I/O.

In order: an active rollout that targets the device's stage; else the newest `production` alias
of a scope the device is in (its profile, set by every deployment, or one of its groups, set when
a rollout completes or by `edgehub rollout alias set`). The newest decision covering a device wins.
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


def resolve_target(profile: str, tags: list[str], production: dict[str, AliasRecord],
                   memberships: list[tuple[int, int, str]], rollouts: dict[int, RolloutState]) -> Target | None:
    """`production`: scope -> that scope's production alias; `memberships`: the device's
    (rollout id, stage, outcome) in active rollouts; `rollouts`: id -> state."""
    for rollout_id, stage, _ in sorted(memberships, reverse=True):  # the newest rollout first
        state = rollouts.get(rollout_id)
        if state is not None and state.targets(stage):
            return Target(model=state.spec.model, version=state.spec.version, rollout=rollout_id,
                          why=f"rollout #{rollout_id}, stage {stage}")
    aliases = [production[s] for s in scopes_of(profile, tags) if s in production]
    if not aliases:
        return None
    newest = max(aliases, key=lambda a: (a.updated_at, a.scope))
    return Target(model=newest.model, version=newest.version, why=f"{newest.scope} production")
