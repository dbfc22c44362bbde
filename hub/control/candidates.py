"""What the hub knows of a target's variants before any device measured them. Pure."""

from __future__ import annotations

from edgehub.hub.control.selection import CandidateFacts
from edgehub.protocol.compatibility import unmet
from edgehub.zoo.records import VariantRecord


def facts_of(variants: list[VariantRecord]) -> list[CandidateFacts]:
    return [CandidateFacts(variant_id=v.id, size_bytes=v.size_bytes, accuracy=v.metrics.get("accuracy"),
                           agreement=v.metrics.get("agreement"), cosine=v.metrics.get("cosine"),
                           near_tie_agreement=v.metrics.get("near_tie_agreement"),
                           task_drop=v.metrics.get("task_drop"))
            for v in variants]


def reference_accuracy(variants: list[VariantRecord]) -> float | None:
    """The accuracy budgets are measured from: the fp32 parent's (the root of the lineage)."""
    roots = [v for v in variants if v.parent is None]
    return roots[0].metrics.get("accuracy") if roots else None


def loadable(variants: list[VariantRecord], runtimes: dict[str, str]) -> tuple[list[VariantRecord], dict[str, str]]:
    """The variants a device with these runtimes can load, and variant id -> why not for the rest
    (the requirements in each signed manifest against the runtime versions the device reported)."""
    ok, refused = [], {}
    for v in variants:
        why = unmet(v.signed_manifest.manifest.requires, runtimes) if v.signed_manifest else None
        if why is None:
            ok.append(v)
        else:
            refused[v.id] = why
    return ok, refused
