"""What the registry accepts and returns: plain pydantic records, no ORM objects leak out."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgehub.protocol.manifest import SignedManifest, TensorSpec

SHA256_PATTERN = r"^[0-9a-f]{64}$"


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(timezone.utc)


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC, so naive means UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class ModelVersionRecord(BaseModel):
    """One published version of a model: the source it was built from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)
    source_kind: Literal["onnx", "torch"]
    source_ref: str  # file name, or "pkg.mod:factory" for a PyTorch factory
    source_sha256: str = Field(pattern=SHA256_PATTERN)
    created_at: datetime = Field(default_factory=utcnow)

    _utc = field_validator("created_at")(_as_utc)


class VariantRecord(BaseModel):
    """One built variant of a model version, with its lineage, recipe, metrics and manifest."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    model: str
    version: int = Field(ge=1)
    parent: str | None = None  # id of the variant this one was derived from
    label: str  # e.g. "fp32", "int8-static"
    profiles: list[str]  # stored as a set: sorted and de-duplicated here
    recipe: list[dict]
    format: str
    precision: str
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float | None] = Field(default_factory=dict)
    references_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    signed_manifest: SignedManifest | None = None
    notes: dict = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)

    _utc = field_validator("created_at")(_as_utc)

    @field_validator("profiles")
    @classmethod
    def _profile_set(cls, values: list[str]) -> list[str]:
        return sorted(set(values))

    def public_json(self) -> dict:
        """The variant as `zoo show --json`, the API and the console give it: the signed manifest
        as plain JSON under `manifest`."""
        data = self.model_dump(mode="json", exclude={"signed_manifest"})
        if self.signed_manifest is not None:
            data["manifest"] = self.signed_manifest.model_dump(mode="json")
        return data

    @field_validator("metrics")
    @classmethod
    def _finite(cls, values: dict[str, float | None]) -> dict[str, float | None]:
        # JSON (and PostgreSQL's json type) has no NaN/inf; a metric that could not be
        # computed is recorded as None ("not measured").
        return {k: (v if v is None or math.isfinite(v) else None) for k, v in values.items()}


class ModelSummary(BaseModel):
    """One line of `edgehub zoo list`."""

    name: str
    latest_version: int
    versions: int  # how many versions exist
    variants: int  # how many variants exist, over all versions
    created_at: datetime

    _utc = field_validator("created_at")(_as_utc)


__all__ = ["ModelSummary", "ModelVersionRecord", "VariantRecord", "utcnow"]
