"""Mapping between ORM rows (zoo.schema) and boundary records (zoo.records)."""

from __future__ import annotations

from edgehub.protocol.manifest import SignedManifest, TensorSpec
from edgehub.zoo.records import ModelVersionRecord, VariantRecord
from edgehub.zoo.schema import ModelVersionRow, VariantProfileRow, VariantRow


def version_record(row: ModelVersionRow) -> ModelVersionRecord:
    """A version row (with its model loaded) as a record."""
    return ModelVersionRecord(
        name=row.model.name,
        version=row.version,
        source_kind=row.source_kind,  # type: ignore[arg-type]  # validated by the record
        source_ref=row.source_ref,
        source_sha256=row.source_sha256,
        created_at=row.created_at,
    )


def variant_record(row: VariantRow) -> VariantRecord:
    """A variant row (with its version, model and profiles loaded) as a record."""
    return VariantRecord(
        id=row.id,
        model=row.model_version.model.name,
        version=row.model_version.version,
        parent=row.parent_id,
        label=row.label,
        profiles=[p.profile for p in row.profiles],
        recipe=row.recipe,
        format=row.format,
        precision=row.precision,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        inputs=[TensorSpec.model_validate(t) for t in row.inputs],
        outputs=[TensorSpec.model_validate(t) for t in row.outputs],
        metrics=row.metrics,
        references_sha256=row.references_sha256,
        signed_manifest=(
            SignedManifest.model_validate(row.signed_manifest) if row.signed_manifest else None
        ),
        notes=row.notes,
        created_at=row.created_at,
    )


def variant_row(record: VariantRecord, model_version_id: int, position: int) -> VariantRow:
    """A new row for `record`; JSON columns get plain JSON values (pydantic mode="json")."""
    return VariantRow(
        id=record.id,
        model_version_id=model_version_id,
        parent_id=record.parent,
        position=position,
        label=record.label,
        recipe=record.recipe,
        format=record.format,
        precision=record.precision,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        inputs=[t.model_dump(mode="json") for t in record.inputs],
        outputs=[t.model_dump(mode="json") for t in record.outputs],
        metrics=record.metrics,
        references_sha256=record.references_sha256,
        signed_manifest=(
            record.signed_manifest.model_dump(mode="json") if record.signed_manifest else None
        ),
        notes=record.notes,
        created_at=record.created_at,
        profiles=[VariantProfileRow(profile=p) for p in record.profiles],
    )


__all__ = ["variant_record", "variant_row", "version_record"]
