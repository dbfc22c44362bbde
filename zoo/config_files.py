"""Reading the TOML / YAML files users hand the hub (device profiles, recipe chains).

One reader, so every such file fails the same way: one line naming the file and what is wrong
(wrong extension, unreadable, not valid TOML/YAML, PyYAML missing), raised as the caller's own
error type so each command keeps its error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

SUFFIXES = (".toml", ".yaml", ".yml")


def read_toml_or_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """The parsed content of `path`; `what` names the kind of file in messages ("recipe", "profiles")."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise error(f"{path}: unsupported {what} file type {suffix or '(none)'!r}; use .toml or .yaml")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise error(f"{path}: not valid TOML: {exc}") from None
    try:
        import yaml  # optional: TOML needs nothing beyond the standard library
    except ImportError:
        raise error(f"{path}: YAML {what} files need PyYAML (pip install pyyaml); or use .toml") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None  # YAML errors span lines
