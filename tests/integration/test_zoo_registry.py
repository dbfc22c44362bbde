"""The registry on SQLite and PostgreSQL: round trips, lineage, and all-or-nothing writes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from db_counts import row_counts

from edgehub.protocol.manifest import Manifest, TensorSpec, verify_manifest
from edgehub.zoo.records import ModelVersionRecord, VariantRecord
from edgehub.zoo.registry import Registry, RegistryError
from edgehub.zoo.signing import HubKey

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)

REGISTRY_TABLES = ("models", "model_versions", "variants", "variant_profiles")


@pytest.fixture
def registry(database: tuple[str, dict]) -> Iterator[Registry]:
    url, connect_args = database
    reg = Registry(url, connect_args=connect_args)
    try:
        yield reg
    finally:
        reg.close()


def sha(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def version(name: str = "mnist", number: int = 1, created_at: datetime = T0) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=name,
        version=number,
        source_kind="onnx",
        source_ref=f"{name}.onnx",
        source_sha256=sha(f"{name}-src-{number}"),
        created_at=created_at,
    )


X = TensorSpec(name="x", dtype="float32", shape=["batch", 1, 28, 28])
Y = TensorSpec(name="y", dtype="float32", shape=["batch", 10])


def variant(
    vid: str,
    parent: str | None = None,
    *,
    model: str = "mnist",
    number: int = 1,
    profiles: tuple[str, ...] = ("x86-cpu",),
    **overrides: object,
) -> VariantRecord:
    fields: dict = {
        "id": vid,
        "model": model,
        "version": number,
        "parent": parent,
        "label": vid.rsplit("-", 1)[-1],
        "profiles": list(profiles),
        "recipe": [{"pass": "export"}],
        "format": "onnx",
        "precision": "fp32",
        "size_bytes": 1000,
        "sha256": sha(vid),
        "inputs": [X],
        "outputs": [Y],
        "metrics": {"accuracy": 0.91},
        "created_at": T0,
    }
    fields.update(overrides)
    return VariantRecord(**fields)


def test_round_trip_all_fields(registry: Registry, tmp_path: Path) -> None:
    key = HubKey.load_or_create(tmp_path / "keys")
    manifest = Manifest(
        variant_id="mnist-1-int8",
        model="mnist",
        version=1,
        format="onnx",
        precision="int8",
        sha256=sha("mnist-1-int8"),
        size_bytes=2_500_000_000,  # past 2**31: needs a BIGINT column
        references_sha256=sha("refs"),
        inputs=[X],
        outputs=[Y],
        recipe=[{"pass": "quantize", "scheme": "reduce_range"}],
        created_at=T0.isoformat(),
    )
    v = version(created_at=T0 - timedelta(days=1))
    fp32 = variant("mnist-1-fp32", profiles=("x86-cpu", "rpi5"), notes={})
    int8 = variant(
        "mnist-1-int8",
        "mnist-1-fp32",
        precision="int8",
        recipe=[{"pass": "quantize", "scheme": "reduce_range", "calib": {"n": 200}}],
        size_bytes=2_500_000_000,
        references_sha256=sha("refs"),
        metrics={"accuracy": 0.9012345678901234, "agreement": None, "drop": float("nan")},
        signed_manifest=key.sign(manifest),
        notes={"int8_scheme": "reduce_range", "ops": [1, 2]},
        inputs=[TensorSpec(name="x", dtype="uint8", shape=[1, "h", "w", 3])],
    )
    registry.register(v, [fp32, int8])

    assert registry.get_version("mnist", 1) == v
    assert registry.latest_version("mnist") == v
    got = registry.get_variant("mnist-1-int8")
    assert got == int8
    assert got.metrics == {"accuracy": 0.9012345678901234, "agreement": None, "drop": None}
    assert got.created_at.tzinfo is not None and got.created_at == T0
    assert got.signed_manifest is not None
    assert verify_manifest(got.signed_manifest, key.public_raw) == manifest
    assert registry.get_variant("mnist-1-fp32") == fp32
    assert registry.get_variant("mnist-1-fp32").profiles == ["rpi5", "x86-cpu"]
    assert registry.get_variant("nope") is None
    assert registry.get_version("mnist", 2) is None and registry.latest_version("other") is None


def test_lineage_order(registry: Registry) -> None:
    # Registered children first, on purpose: the registry orders parents before children.
    batch = [
        variant("m-1-int8-pruned", "m-1-int8", model="m"),
        variant("m-1-fp16", "m-1-fp32", model="m"),
        variant("m-1-fp32", model="m"),
        variant("m-1-int8", "m-1-fp32", model="m"),
        variant("m-1-other-root", model="m"),
    ]
    registry.register(version("m"), batch)
    order = [v.id for v in registry.variants("m")]
    assert order == ["m-1-fp32", "m-1-int8", "m-1-int8-pruned", "m-1-fp16", "m-1-other-root"]
    assert order == [v.id for v in registry.variants("m", 1)]

    # A later version may derive from an already registered variant.
    registry.register(version("m", 2), [variant("m-2-int8", "m-1-fp32", model="m", number=2)])
    assert [v.id for v in registry.variants("m")] == ["m-2-int8"]
    assert registry.get_variant("m-2-int8").parent == "m-1-fp32"
    assert registry.variants("unknown") == [] and registry.variants("m", 7) == []


def test_duplicate_version_rejected_and_nothing_changes(registry: Registry) -> None:
    registry.register(version(), [variant("mnist-1-fp32")])
    before = row_counts(registry.engine)
    assert {k: before[k] for k in REGISTRY_TABLES} == {"models": 1, "model_versions": 1, "variants": 1,
                                                       "variant_profiles": 1}
    with pytest.raises(RegistryError, match=r"^cannot register mnist v1: that version already"):
        registry.register(version(), [variant("mnist-1-fp16")])
    assert row_counts(registry.engine) == before
    assert registry.get_variant("mnist-1-fp16") is None


def n(vid: str, parent: str | None = None, number: int = 1) -> VariantRecord:
    return variant(vid, parent, model="n", number=number)


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ([n("n-1-a"), n("mnist-1-fp32")], "variant id 'mnist-1-fp32' already exists"),
        ([n("n-1-a"), n("n-1-a")], "variant id 'n-1-a' appears twice"),
        ([n("n-1-a", "n-1-ghost")], "parent variant 'n-1-ghost' is unknown"),
        ([n("n-1-a", "n-1-b"), n("n-1-b", "n-1-a")], "lineage cycle"),
        ([n("n-1-a"), n("n-2-a", number=2)], "belongs to n v2"),
    ],
    ids=["id-taken", "id-twice", "unknown-parent", "cycle", "wrong-version"],
)
def test_failing_batch_leaves_nothing(
    registry: Registry, batch: list[VariantRecord], problem: str
) -> None:
    registry.register(version(), [variant("mnist-1-fp32")])
    before = row_counts(registry.engine)
    with pytest.raises(RegistryError, match=problem) as info:
        registry.register(version("n"), batch)
    assert "\n" not in str(info.value)
    assert row_counts(registry.engine) == before
    assert registry.latest_version("n") is None
    assert [m.name for m in registry.list_models()] == ["mnist"]


def test_database_level_conflict_rolls_back(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a concurrent writer slips past the checks, the database's constraints still hold and
    the model/version rows already flushed in the transaction are rolled back."""
    registry.register(version(), [variant("mnist-1-fp32")])
    before = row_counts(registry.engine)
    monkeypatch.setattr(Registry, "_check_existing", staticmethod(lambda *a: None))
    with pytest.raises(RegistryError, match="conflicting write"):
        registry.register(version("n"), [n("n-1-a"), n("mnist-1-fp32")])
    assert row_counts(registry.engine) == before
    assert registry.latest_version("n") is None


def test_variants_for_profile(registry: Registry) -> None:
    registry.register(
        version(),
        [
            variant("mnist-1-fp32", profiles=("x86-cpu", "rpi5", "jetson-orin-nano")),
            variant("mnist-1-int8", "mnist-1-fp32", profiles=("x86-cpu", "rpi5")),
            variant("mnist-1-trt-fp16", "mnist-1-fp32", profiles=("jetson-orin-nano",)),
        ],
    )
    def ids(records: list[VariantRecord]) -> list[str]:
        return [r.id for r in records]

    rpi5 = registry.variants_for_profile("mnist", 1, "rpi5")
    assert ids(rpi5) == ["mnist-1-fp32", "mnist-1-int8"]
    jetson = registry.variants_for_profile("mnist", None, "jetson-orin-nano")
    assert ids(jetson) == ["mnist-1-fp32", "mnist-1-trt-fp16"]
    assert jetson[0].profiles == ["jetson-orin-nano", "rpi5", "x86-cpu"]  # all, not just the match
    assert registry.variants_for_profile("mnist", 1, "coral-edgetpu") == []
    assert registry.variants_for_profile("mnist", 2, "rpi5") == []


def test_list_models(registry: Registry) -> None:
    assert registry.list_models() == []
    registry.register(version("zeta"), [variant("z-1", model="zeta")])
    registry.register(
        version("alpha"), [variant("a-1a", model="alpha"), variant("a-1b", model="alpha")]
    )
    registry.register(version("alpha", 2), [variant("a-2", model="alpha", number=2)])
    registry.register(version("alpha", 3), [])

    summaries = registry.list_models()
    assert [(s.name, s.latest_version, s.versions, s.variants) for s in summaries] == [
        ("alpha", 3, 3, 3),
        ("zeta", 1, 1, 1),
    ]
    assert summaries[0].created_at == T0
    assert registry.latest_version("alpha").version == 3
    assert registry.variants("alpha") == []
    counts = row_counts(registry.engine)
    assert {k: counts[k] for k in REGISTRY_TABLES} == {"models": 2, "model_versions": 4, "variants": 4,
                                                       "variant_profiles": 4}


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/registry.db"
    with Registry(url) as reg:
        reg.register(version(), [variant("mnist-1-fp32")])
    with Registry(url) as reg:
        assert reg.get_variant("mnist-1-fp32") == variant("mnist-1-fp32")
        with reg.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_in_memory_sqlite_is_shared_across_sessions() -> None:
    with Registry("sqlite://") as reg:
        reg.register(version(), [variant("mnist-1-fp32")])
        assert reg.latest_version("mnist") == version()
