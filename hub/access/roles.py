"""Roles and what each may do. A role includes the rights of the roles below it:

    viewer < publisher < operator < admin

- viewer: read everything the fleet status, zoo, rollouts, jobs and reports show;
- publisher: also upload models and run publish jobs (which register versions, never deploy them);
- operator: also act on the fleet: start / pause / resume / abort / approve rollouts, move aliases, tag devices;
- admin: also create and revoke tokens and read the audit log of everyone.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["viewer", "publisher", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "publisher", "operator", "admin")


def allows(role: str, needed: Role) -> bool:
    """Whether `role` includes the rights of `needed` (an unknown role allows nothing)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)
