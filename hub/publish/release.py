"""Publish and deploy as one step: what `edgehub publish` and the demo run.

The build (pipeline.publish) knows only the registry; deploying targets the new version at the
profiles' devices through the fleet store, and the hub's fleet loop turns that into candidates.
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
    changed = [p for p in dict.fromkeys(profiles) if fleet.deployment_for(p) != target]
    if changed:
        fleet.deploy(target[0], target[1], changed)
    return changed


@dataclass
class Release:
    outcome: PublishOutcome
    deployed_profiles: list[str] = field(default_factory=list)
    enrolled_devices: int = 0


def publish_and_deploy(options: PublishOptions, paths: HubPaths, registry: Registry, fleet: FleetStore,
                       sink: ProgressSink | None = None, *, deploy_to_fleet: bool = True) -> Release:
    """Build and register the variants, then (unless told not to) deploy them to the profiles' devices."""
    outcome = publish(options, paths, registry, sink)
    if not deploy_to_fleet:
        return Release(outcome)
    deployed = deploy(fleet, outcome, options.profiles)
    devices = sum(len(fleet.device_ids(profile=p)) for p in dict.fromkeys(options.profiles))
    return Release(outcome, deployed, devices)
