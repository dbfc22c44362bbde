"""Where the hub keeps its state: registry database, artifacts, keys, scratch space."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "EDGEHUB_HOME"
DB_URL_ENV = "EDGEHUB_DB_URL"


def resolve_home(home: str | Path | None = None) -> Path:
    """Return the hub home directory (created if missing) as an absolute path.

    Precedence: the explicit argument, then $EDGEHUB_HOME, then ~/.edgehub.
    """
    if home is None or str(home) == "":
        home = os.environ.get(HOME_ENV) or Path.home() / ".edgehub"
    path = Path(home).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class HubPaths:
    """The well-known locations under one hub home."""

    root: Path

    @classmethod
    def from_home(cls, home: str | Path | None = None) -> HubPaths:
        """Build from `resolve_home(home)`."""
        return cls(root=resolve_home(home))

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL: $EDGEHUB_DB_URL (e.g. PostgreSQL for a fleet), else local SQLite."""
        # Read at access time, not construction time, so tests can set the env per case.
        return os.environ.get(DB_URL_ENV) or f"sqlite:///{self.root}/registry.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"
