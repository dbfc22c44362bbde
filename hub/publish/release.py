"""Publish, and optionally deploy, as one step: what `edgehub publish`, a remote publish job and the
demo run.

The build (pipeline.publish) knows only the registry. Publishing registers a version and nothing
more: devices get it through a rollout or an explicit alias change. Deploying (`--deploy`, the
demo) targets the new version at the profiles' devices at once through the fleet store, and the
hub's fleet loop turns that into candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import ProgressSink, PublishOptions, PublishOutcome, publish
from edgehub.zoo.registry import Registry


def deploy(fleet: FleetStore, outcome: PublishOutcome, profiles: list[str]) -> list[str]:
    """Target the published version at these profiles' devices; returns the profiles changed.

    The hub's fleet loop turns a deployment into desired states (candidates) for every device
    of the profile, now and when devices enrol later.
    """
    target = (outcome.version.name, outcome.version.version)
    changed = [p for p in dict.fromkeys(profiles) if fleet.deployment_for(p, target[0]) != target]
    if changed:
        fleet.deploy(target[0], target[1], changed)
    return changed


@dataclass
class Release:
    outcome: PublishOutcome
    deployed_profiles: list[str] = field(default_factory=list)
    enrolled_devices: int = 0

    def as_json(self) -> dict:
        """What `publish --json` prints, locally and from a remote job alike."""
        outcome = self.outcome
        return {"model": outcome.version.name, "version": outcome.version.version,
                "already_published": outcome.already_published,
                "variants": [v.public_json() for v in outcome.variants],
                "skipped": [s.model_dump() for s in outcome.skipped],
                "deployed_profiles": self.deployed_profiles, "enrolled_devices": self.enrolled_devices}


def publish_and_deploy(options: PublishOptions, paths: HubPaths, registry: Registry, fleet: FleetStore,
                       sink: ProgressSink | None = None, *, deploy_to_fleet: bool = False) -> Release:
    """Build and register the variants; with `deploy_to_fleet`, also make them the profiles' production
    (every device of the profiles gets them at once: the demo's shortcut; a fleet uses a rollout)."""
    outcome = publish(options, paths, registry, sink)
    if not deploy_to_fleet:
        return Release(outcome)
    deployed = deploy(fleet, outcome, options.profiles)
    devices = sum(len(fleet.device_ids(profile=p)) for p in dict.fromkeys(options.profiles))
    return Release(outcome, deployed, devices)
