"""The agent's configuration file (TOML), as written by `edgehub fleet enroll`."""

from __future__ import annotations

import base64
from pathlib import Path

import tomllib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from edgehub.protocol.base import ID_PATTERN


class ConfigError(Exception):
    """An agent config that cannot be used; the message names the file and the problem."""


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=ID_PATTERN)
    fleet: str = Field("default", pattern=ID_PATTERN)
    profile: str
    broker_url: str  # mqtt://host:port or mqtts://host:port
    username: str
    password: SecretStr
    ca_file: Path | None = None  # for mqtts:// and https:// with the hub's own CA (relative: to this file)
    hub_public_key: str  # base64 raw ed25519 key: only artifacts signed with it (or a trusted_keys one) are used
    # More keys whose manifests verify (key rotation, see docs/RELIABILITY.md): the hub's next
    # key before it signs, or its previous key while old manifests are still in use.
    trusted_keys: list[str] = Field(default_factory=list, max_length=16)
    data_dir: Path
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8765, ge=0, le=65535)  # local POST /predict; 0 picks a free port
    cache_limit_mb: int = Field(2048, gt=0)  # downloaded variants; least recently used evicted first
    min_free_mb: int = Field(256, ge=0)  # never fill the disk past this much free space
    keepalive_s: int = Field(30, ge=5, le=3600)
    # The protocol version the agent announces: 2 (model slots) unless pinned to 1, which makes it
    # behave as a one-model agent of the previous release (mixed-fleet tests, a cautious upgrade).
    protocol: int = Field(2, ge=1, le=2)


def load_config(path: Path) -> AgentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (make one with `edgehub fleet enroll`)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    if not config.data_dir.is_absolute():
        config.data_dir = (path.parent / config.data_dir).resolve()
    if config.ca_file is not None and not config.ca_file.is_absolute():
        config.ca_file = (path.parent / config.ca_file).resolve()
    return config


def public_keys(config: AgentConfig) -> list[bytes]:
    """The raw ed25519 keys the agent trusts: the hub's key first, then `trusted_keys`."""
    keys = []
    for text in (config.hub_public_key, *config.trusted_keys):
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise ConfigError(f"hub key {text[:12]}... is not base64") from None
        if len(raw) != 32:
            raise ConfigError(f"hub key {text[:12]}... is not a 32-byte ed25519 key")
        if raw not in keys:
            keys.append(raw)
    return keys


def dump_config(config: AgentConfig) -> str:
    """TOML text for a config (the few types it uses need no TOML writer library)."""
    lines = []
    for key, value in config.model_dump(mode="json").items():
        if key == "password":
            value = config.password.get_secret_value()
        if value is None:
            continue
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_toml_string(str(v)) for v in value)}]")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {_toml_string(str(value))}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
