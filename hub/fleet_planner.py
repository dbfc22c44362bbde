"""What a device's desired state should be. Pure functions; the fleet service does the I/O.

Generations only move forward. A new deployment (model version) for the device's profile
gives a new candidate list; a selection gives a new variant to activate. Anything else leaves
the desired state as it is, so repeated reconciles publish nothing.
"""

from __future__ import annotations

from edgehub.agent.messages import BenchmarkSettings, Candidate, DesiredState, now_utc


def next_desired(device_id: str, current: DesiredState | None, deployment: tuple[str, int] | None,
                 candidates: list[Candidate], winner: str | None,
                 settings: BenchmarkSettings) -> DesiredState | None:
    """The new desired state for a device, or None when nothing needs to change."""
    if deployment is None:
        return None
    model, version = deployment
    wanted_ids = [c.variant_id for c in candidates]
    generation = (current.generation + 1) if current else 1
    if current is None or (current.model, current.version) != (model, version) or \
            [c.variant_id for c in current.candidates] != wanted_ids or current.benchmark != settings:
        # New work: benchmark these candidates. The device keeps serving what it has meanwhile.
        return DesiredState(device_id=device_id, generation=generation, model=model, version=version,
                            candidates=candidates, activate=current.activate if current else None,
                            benchmark=settings)
    if winner is not None and winner != current.activate and winner in wanted_ids:
        # A fresh `at`: the copy would otherwise carry the previous generation's time.
        return current.model_copy(update={"generation": generation, "activate": winner, "at": now_utc()})
    return None
