"""What the agent remembers across restarts: per model slot the active and previous variant, what
it has installed and benchmarked.

Kept in one JSON file replaced atomically (write temp, fsync, rename), so a power cut leaves
either the old or the new state, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

from edgehub.protocol.manifest import SignedManifest
from edgehub.protocol.runtime_settings import RuntimeSettings


class InstalledVariant(BaseModel):
    """A downloaded, verified variant in the agent's cache."""

    variant_id: str
    sha256: str
    format: str
    path: Path
    references_path: Path | None = None
    manifest: SignedManifest
    last_used: float = 0.0  # unix time of the last download, benchmark or activation (cache LRU)


class SlotRecord(BaseModel):
    """One model slot: the variant it serves and the one it rolls back to."""

    active: InstalledVariant | None = None
    previous: InstalledVariant | None = None
    settings: RuntimeSettings | None = None  # what `active` runs with (None: the runtime's defaults)
    previous_settings: RuntimeSettings | None = None


class LocalState(BaseModel):
    slots: dict[str, SlotRecord] = Field(default_factory=dict)  # by model name
    installed: dict[str, InstalledVariant] = Field(default_factory=dict)  # by variant id
    benchmarked: dict[str, str] = Field(default_factory=dict)  # variant id (or pair key) -> sha256 reported
    default_p50: dict[str, float | None] = Field(default_factory=dict)  # variant id -> p50 at defaults (None: failed)
    pair_p50: dict[str, float | None] = Field(default_factory=dict)  # pair key -> p50 of its tuning run
    tuning_spent_s: dict[str, float] = Field(default_factory=dict)  # "model:version" -> seconds spent tuning it
    generation_seen: int = 0

    @model_validator(mode="before")
    @classmethod
    def _one_slot_layout(cls, data):
        # A state file of a one-model agent (top-level active/previous) becomes that model's slot.
        if isinstance(data, dict) and ("active" in data or "previous" in data):
            data = dict(data)
            active, previous = data.pop("active", None), data.pop("previous", None)
            either = active or previous
            if either is not None and not data.get("slots"):
                model = InstalledVariant.model_validate(either).manifest.manifest.model
                data["slots"] = {model: {"active": active, "previous": previous}}
        return data

    def slot(self, model: str) -> SlotRecord:
        """The slot of `model`, made empty if it has none yet."""
        return self.slots.setdefault(model, SlotRecord())

    def active_variants(self) -> dict[str, InstalledVariant]:
        """Slot -> its active variant, for the slots that have one."""
        return {m: s.active for m, s in sorted(self.slots.items()) if s.active is not None}

    def protected(self) -> set[str]:
        """Variant ids the cache must keep: every slot's active and rollback variant."""
        return {v.variant_id for s in self.slots.values() for v in (s.active, s.previous) if v is not None}


class StateFile:
    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> LocalState:
        if not self.path.exists():
            return LocalState()
        try:
            return LocalState.model_validate_json(self.path.read_bytes())
        except (ValidationError, ValueError) as exc:
            # A state file we cannot read must not brick the device: keep it aside, start clean.
            aside = self.path.with_suffix(".corrupt")
            os.replace(self.path, aside)
            raise CorruptState(f"{self.path} was unreadable ({exc.__class__.__name__}); moved to {aside.name}") from None

    def save(self, state: LocalState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(state.model_dump(mode="json"), indent=1))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class CorruptState(Exception):
    """The state file could not be read; it was moved aside."""
