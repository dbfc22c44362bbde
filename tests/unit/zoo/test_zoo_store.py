"""The content-addressed artifact store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgehub.protocol.files import sha256_file
from edgehub.zoo import store as store_mod
from edgehub.zoo.store import ArtifactStore


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks plus a tail
    src.write_bytes(data)

    sha, size = store.put_file(src)

    assert sha == hashlib.sha256(data).hexdigest() == sha256_file(src)
    assert size == len(data) == store.size(sha)
    assert store.path_for(sha) == store.root / sha[:2] / sha
    assert store.path_for(sha).read_bytes() == data
    assert store.has(sha)
    assert store.list() == [sha]


def test_put_bytes_and_dedup(store: ArtifactStore, tmp_path: Path) -> None:
    sha, size = store.put_bytes(b"hello")
    assert (sha, size) == (hashlib.sha256(b"hello").hexdigest(), 5)
    before = store.path_for(sha).stat()

    src = tmp_path / "same.bin"
    src.write_bytes(b"hello")
    assert store.put_file(src) == (sha, 5)
    assert store.put_bytes(b"hello") == (sha, 5)

    after = store.path_for(sha).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert _all_files(store.root) == [store.path_for(sha)]


def test_no_temp_files_left_and_objects_readable(store: ArtifactStore) -> None:
    shas = [store.put_bytes(bytes([i]) * 100)[0] for i in range(20)]
    assert _all_files(store.root) == sorted(store.path_for(s) for s in shas)
    assert sorted(shas) == store.list()
    mode = store.path_for(shas[0]).stat().st_mode & 0o777
    assert mode == 0o644


def test_source_changed_during_copy_is_rejected(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(b"new content")
    # The first hash pass "saw" other bytes than the copy reads: the store must notice.
    monkeypatch.setattr(store_mod, "sha256_file", lambda _p: hashlib.sha256(b"old").hexdigest())
    with pytest.raises(OSError, match="source changed"):
        store.put_file(src)
    assert _all_files(store.root) == []


def test_failed_write_leaves_nothing(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        store.put_bytes(b"data")
    assert _all_files(store.root) == []
    assert store.list() == []


@pytest.mark.parametrize(
    "bad", ["", "abc", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "../" + "a" * 61, None, 123]
)
def test_bad_sha_rejected(store: ArtifactStore, bad: object) -> None:
    with pytest.raises(ValueError, match="sha256"):
        store.path_for(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.has(bad)  # type: ignore[arg-type]


def test_remove_size_and_strays(store: ArtifactStore, tmp_path: Path) -> None:
    sha, _ = store.put_bytes(b"x")
    (store.root / sha[:2] / ".tmp-stray").write_bytes(b"partial")
    (store.root / "README").write_text("not an object")
    assert store.list() == [sha]

    store.remove(sha)
    assert not store.has(sha)
    store.remove(sha)  # idempotent: rollback may run twice
    with pytest.raises(FileNotFoundError, match=sha):
        store.size(sha)
    with pytest.raises(FileNotFoundError, match="not a file"):
        store.put_file(tmp_path)
