"""Hub home resolution and well-known paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.hub.home import HubPaths, resolve_home


def test_explicit_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEHUB_HOME", str(tmp_path / "env"))
    home = resolve_home(tmp_path / "explicit" / "nested")
    assert home == (tmp_path / "explicit" / "nested").resolve()
    assert home.is_dir() and home.is_absolute()


def test_env_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEHUB_HOME", str(tmp_path / "env"))
    assert resolve_home() == (tmp_path / "env").resolve()
    monkeypatch.delenv("EDGEHUB_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_home() == (tmp_path / "user" / ".edgehub").resolve()


def test_hub_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEHUB_DB_URL", raising=False)
    paths = HubPaths.from_home(tmp_path / "h")
    root = (tmp_path / "h").resolve()
    assert paths.root == root
    assert paths.db_url == f"sqlite:///{root}/registry.db"
    assert (paths.artifacts_dir, paths.keys_dir, paths.work_dir) == (
        root / "artifacts",
        root / "keys",
        root / "work",
    )
    monkeypatch.setenv("EDGEHUB_DB_URL", "postgresql+psycopg://hub@db/edgehub")
    assert paths.db_url == "postgresql+psycopg://hub@db/edgehub"
    with pytest.raises(AttributeError):
        paths.root = tmp_path  # type: ignore[misc]  # frozen
