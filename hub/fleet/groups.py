"""Device groups: a group is a tag (`edgehub fleet tag`) or a whole profile. Pure; no I/O.

A selector is written `TAG` or `profile:NAME`; aliases and rollouts name their scope with it
(`group:TAG`, `profile:NAME`), so one device can be in many groups at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgehub.hub.fleet.records import FleetError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class GroupError(FleetError, ValueError):
    """A group selector that cannot be parsed (the message is one line)."""


class GroupSelector(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["tag", "profile"]
    name: str

    @property
    def scope(self) -> str:
        """The alias scope of this group."""
        return f"profile:{self.name}" if self.kind == "profile" else f"group:{self.name}"

    def __str__(self) -> str:
        return f"profile:{self.name}" if self.kind == "profile" else self.name

    def matches(self, profile: str, tags: Iterable[str]) -> bool:
        return profile == self.name if self.kind == "profile" else self.name in tags


def parse_selector(text: str) -> GroupSelector:
    """`lab` -> the devices tagged lab; `profile:x86-cpu` -> every device of that profile."""
    kind, _, name = text.strip().partition(":") if text.strip().startswith("profile:") else ("tag", "", text.strip())
    if not NAME_RE.match(name):
        raise GroupError(f"invalid group {text!r}: use a tag (lower-case letters, digits, '.', '_', '-') "
                         "or profile:NAME")
    return GroupSelector(kind="profile" if kind == "profile" else "tag", name=name)


def validate_tag(tag: str) -> str:
    if not NAME_RE.match(tag):
        raise GroupError(f"invalid tag {tag!r}: use lower-case letters, digits, '.', '_' or '-' (max 64)")
    return tag


def scopes_of(profile: str, tags: Iterable[str]) -> list[str]:
    """Every alias scope a device is in: its profile and each of its tags."""
    return [f"profile:{profile}", *(f"group:{t}" for t in sorted(set(tags)))]
