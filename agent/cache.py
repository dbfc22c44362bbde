"""The agent's download cache: a size limit with least-recently-used eviction, and a disk guard.

Before a download the agent makes room: files no variant uses (a partial download of another
candidate, leftovers) go first, oldest first; then installed variants, least recently used
first. Every slot's active and previous variant (the rollback target) are never evicted. If the
limit or the free-disk reserve cannot be met even then, the download does not start
(`CacheFull`), so a device never fills its disk with a model it could not keep.

`plan_eviction` is the pure decision; `make_room` applies it to the files and the state.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgehub.agent.download import DownloadError
from edgehub.agent.local_state import LocalState

log = logging.getLogger("edgehub.agent.cache")

MB = 1024 * 1024


class CacheFull(DownloadError):
    """No room for a download within the cache limit and the free-disk reserve."""


@dataclass(frozen=True)
class CacheEntry:
    """Something in the cache that takes `size` bytes: an installed variant or a stray file."""

    key: str
    size: int
    last_used: float
    protected: bool = False
    stray: bool = False  # a file no variant uses (a partial download of another candidate, leftovers)


def plan_eviction(entries: list[CacheEntry], *, incoming: int, limit: int, free: int,
                  min_free: int) -> list[CacheEntry]:
    """What to evict, in order, so that `incoming` more bytes fit under `limit` and leave at
    least `min_free` bytes free on the disk (`free` bytes are free now). Raises CacheFull."""
    if incoming > limit:
        raise CacheFull(f"the download needs {incoming / MB:.1f} MB, over the cache limit of {limit / MB:.0f} MB")
    used = sum(e.size for e in entries)
    over_limit = used + incoming - limit
    short_of_disk = min_free - (free - incoming)
    evict: list[CacheEntry] = []
    for entry in sorted((e for e in entries if not e.protected), key=lambda e: (not e.stray, e.last_used)):
        if over_limit <= 0 and short_of_disk <= 0:
            break
        evict.append(entry)
        over_limit -= entry.size
        short_of_disk -= entry.size
    if over_limit > 0:
        raise CacheFull(f"the download needs {incoming / MB:.1f} MB; the cache limit is {limit / MB:.0f} MB "
                        f"and the active and previous variants use {(used - sum(e.size for e in evict)) / MB:.1f} MB")
    if short_of_disk > 0:
        raise CacheFull(f"not enough disk space: the download needs {incoming / MB:.1f} MB, {free / MB:.0f} MB "
                        f"are free and {min_free / MB:.0f} MB must stay free")
    return evict


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def cache_entries(state: LocalState, cache_dir: Path, keep: set[Path]) -> list[CacheEntry]:
    """Installed variants and stray files in `cache_dir`; files in `keep` (the download under
    way) are left out. A reference file shared by several variants is counted once."""
    protected = state.protected()
    entries, counted = [], set(keep)
    for variant_id, v in state.installed.items():
        files = [p for p in (Path(v.path), v.references_path and Path(v.references_path)) if p and p not in counted]
        counted.update(files)
        entries.append(CacheEntry(f"variant:{variant_id}", sum(_size(p) for p in files), v.last_used,
                                  protected=variant_id in protected))
    if cache_dir.is_dir():
        for path in cache_dir.iterdir():
            if path.is_file() and path not in counted:
                entries.append(CacheEntry(f"file:{path.name}", _size(path), path.stat().st_mtime, stray=True))
    return entries


def make_room(state: LocalState, cache_dir: Path, dest: Path, incoming_total: int, *,
              limit_mb: int, min_free_mb: int) -> list[str]:
    """Evict what `plan_eviction` says so that `dest` (`incoming_total` bytes, part of them maybe
    already in `dest`.part) fits; returns the evicted keys. The state is changed in memory:
    the caller saves it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    remaining = max(0, incoming_total - _size(part))
    entries = cache_entries(state, cache_dir, keep={dest, part})
    evict = plan_eviction(entries, incoming=remaining, limit=limit_mb * MB,
                          free=shutil.disk_usage(cache_dir).free, min_free=min_free_mb * MB)
    for entry in evict:
        kind, _, name = entry.key.partition(":")
        if kind == "file":
            (cache_dir / name).unlink(missing_ok=True)
        else:
            _evict_variant(state, name)
        log.info("cache: evicted %s (%.1f MB, last used %s)", name, entry.size / MB,
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)) if entry.last_used else "never")
    return [e.key for e in evict]


def _evict_variant(state: LocalState, variant_id: str) -> None:
    variant = state.installed.pop(variant_id)
    Path(variant.path).unlink(missing_ok=True)
    refs = variant.references_path
    if refs is not None and not any(v.references_path == refs for v in state.installed.values()):
        Path(refs).unlink(missing_ok=True)


def touch(state: LocalState, variant_id: str) -> None:
    """Mark a variant as used now (it moves to the back of the eviction order)."""
    variant = state.installed.get(variant_id)
    if variant is not None:
        variant.last_used = time.time()


__all__ = ["CacheEntry", "CacheFull", "cache_entries", "make_room", "plan_eviction", "touch"]
